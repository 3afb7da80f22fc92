#!/usr/bin/env bash
# Runs schemathesis (the API fuzzer of `make chaos`) from a private virtualenv under target/,
# installing it from PyPI on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
venv=target/fuzz-venv
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $version" ]; then
  echo "installing schemathesis $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
exec "$venv/bin/schemathesis" "$@"
