#!/usr/bin/env bash
# Screenshots of the built documentation site (bash scripts/docs.sh first) with headless Chromium.
#   bash scripts/screenshot_docs.sh [PAGE.html ...]   (pages relative to site/; default: home, rules API, a how-to, a study)
# Writes outputs/docs_screens/<page path with / as _>.png (1280x1600, or SIZE=WIDTH,HEIGHT).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
[ -f site/index.html ] || { echo "screenshot_docs: site/index.html missing; run bash scripts/docs.sh first" >&2; exit 2; }
BROWSER=$(command -v chromium || command -v chromium-browser || true)
[ -n "$BROWSER" ] || { echo "screenshot_docs: chromium not found (apt-get install chromium)" >&2; exit 2; }
OUT="$ROOT/outputs/docs_screens"
SIZE=${SIZE:-1280,1600}  # window width,height (SIZE=1280,8000 for a long page)
mkdir -p "$OUT"
if [ "$#" -eq 0 ]; then
  set -- index.html api/rules.html howto/composites.html studies/isnet/report.html
fi
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
for page in "$@"; do
  [ -f "site/$page" ] || { echo "screenshot_docs: site/$page not found" >&2; exit 2; }
  png="$OUT/$(echo "${page%.html}" | tr '/' '_').png"
  "$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$PROFILE" \
    --window-size="$SIZE" --virtual-time-budget=5000 --screenshot="$png" "file://$ROOT/site/$page" \
    >/dev/null 2>&1
  [ -s "$png" ] || { echo "screenshot_docs: no screenshot for $page" >&2; exit 1; }
  echo "$png"
done
