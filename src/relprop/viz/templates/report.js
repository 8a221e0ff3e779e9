// Records on load whether every image decoded and how many visible body rows each table has
// (<body data-images-ok data-images data-broken-images data-tables data-table-rows>), for headless-browser checks.
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var rows = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    return Array.prototype.filter.call(t.querySelectorAll("tbody tr"), function (r) {
      return r.getBoundingClientRect().height > 0;
    }).length;
  });
  var b = document.body.dataset;
  b.images = String(imgs.length);
  b.imagesOk = String(broken.length === 0);
  b.brokenImages = broken.map(function (i) { return i.alt; }).join("|");
  b.tables = String(rows.length);
  b.tableRows = rows.join(",");
});
