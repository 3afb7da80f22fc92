#!/usr/bin/env bash
# make test: a throw-away PostgreSQL cluster under target/ (unless DATABASE_URL is set),
# the whole suite, then the cluster is stopped so nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  port=${HERALD_TEST_PG_PORT:-15433}
  dir=target/pgtest
  trap 'scripts/pg.sh stop "$dir"' EXIT
  scripts/pg.sh start "$dir" "$port" test
  # Each test creates its own database; drop what earlier runs left behind.
  psql -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "select 'drop database \"' || datname || '\";' from pg_database where datname like 'herald_test_%'" postgres \
    | psql -h 127.0.0.1 -p "$port" -U postgres -q postgres >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  # make chaos restarts this cluster under load.
  export HERALD_TEST_PG_DIR="$PWD/$dir" HERALD_TEST_PG_PORT="$port"
fi
# The dashboard's browser test drives headless Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 && [ "${HERALD_SKIP_BROWSER_TESTS:-}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver for the browser test" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromedriver is missing and cannot be installed here (needs root and apt-get):" >&2
    echo "install chromium-driver, or set HERALD_SKIP_BROWSER_TESTS=1 to skip that test" >&2
    exit 1
  fi
fi

# Tests read the database from the environment only, never from a developer's .env.
export HERALD_TEST_DATABASE_URL="$DATABASE_URL"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
