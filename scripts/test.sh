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
fi
# Tests read the database from the environment only, never from a developer's .env.
export HERALD_TEST_DATABASE_URL="$DATABASE_URL"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
