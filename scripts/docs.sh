#!/usr/bin/env bash
# Builds the documentation site into site/ with warnings as errors (run from any folder; needs .venv from
# scripts/setup.sh). First it runs the how-to tutorials (their figures go to docs/howto/figures/) and the code of
# docs/getting-started.md (pictures in docs/generated/); both folders are generated and git-ignored.
#   bash scripts/docs.sh            build site/ (open site/index.html in a browser, or serve the folder)
#   bash scripts/docs.sh --serve    the same, then serve it at http://127.0.0.1:8000 with live reload
#   bash scripts/docs.sh --no-tutorials   skip the tutorials, reuse the figures in docs/howto/figures/ (quick edits)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "docs: .venv/bin/python not found; run bash scripts/setup.sh first" >&2; exit 2; }
"$PY" -c "import mkdocs, mkdocstrings, material" 2>/dev/null \
  || { echo "docs: the documentation tools are missing; run bash scripts/setup.sh (installs the docs extra)" >&2; exit 2; }
export NO_MKDOCS_2_WARNING=1  # Material's notice about MkDocs 2 (this site pins mkdocs<2)
export MPLBACKEND=Agg
SERVE=0 TUTORIALS=1
for arg in "$@"; do
  case "$arg" in
    --serve) SERVE=1 ;;
    --no-tutorials) TUTORIALS=0 ;;
    *) echo "docs: unknown option '$arg' (options: --serve, --no-tutorials)" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
if [ "$TUTORIALS" = 1 ] && [ -f docs/tutorials/run_all.py ]; then
  echo "docs: running the tutorials (docs/tutorials/run_all.py --quick)"
  "$PY" docs/tutorials/run_all.py --out docs/howto/figures --quick
fi
echo "docs: running the code of docs/getting-started.md"
"$PY" scripts/docs_getting_started.py
echo "docs: building the site (mkdocs build --strict)"
"$PY" -m mkdocs build --strict --site-dir site
echo "docs: site/index.html built in $(( $(date +%s) - start )) s"
if [ "$SERVE" = 1 ]; then
  exec "$PY" -m mkdocs serve --strict
fi
