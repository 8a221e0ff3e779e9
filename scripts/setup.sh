#!/usr/bin/env bash
# Creates .venv and installs relprop with everything the demo, the tests and the documentation site need.
# torch and torchvision are pinned here (the package itself accepts a range).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q --disable-pip-version-check -e ".[dev,docs]"   # docs: the documentation site (scripts/docs.sh)
# zennit is our reference for classical rules (tests and benchmarks only, LGPL, never vendored).
# 1.0.0 declares python<3.11, hence --ignore-requires-python; its dependencies are installed above.
$PIP install -q --disable-pip-version-check --no-deps --ignore-requires-python "zennit==1.0.0"
# Headless Chromium for the HTML report's browser test (Debian package; needs root, as on CI).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
      || echo "setup: could not install chromium; the report's browser test will fail on CI" >&2
  else
    echo "setup: chromium not found; install it (apt-get install chromium) for the report's browser test" >&2
  fi
fi
# Fashion-MNIST (60000 + 10000 images, MIT) for the digits study's --source fashion (Debian package; needs root).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "setup: could not install dataset-fashion-mnist; relprop study isnet --source fashion will not run" >&2
fi
