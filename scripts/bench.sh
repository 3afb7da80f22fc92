#!/usr/bin/env bash
# make bench: a durable PostgreSQL cluster under target/ (unless DATABASE_URL is set), a
# release build, then `herald-bench suite`. Arguments go to the suite (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

for bin in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
  if [ -x "$bin/pgbench" ]; then PATH="$bin:$PATH"; break; fi
done

if [ -z "${DATABASE_URL:-}" ]; then
  port=${HERALD_BENCH_PG_PORT:-15434}
  dir=target/pgbench
  trap 'scripts/pg.sh stop "$dir"' EXIT
  # Durable settings: fsync and synchronous_commit stay on.
  scripts/pg.sh start "$dir" "$port" bench
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi

cargo build --release -p herald -p herald-bench
target/release/herald-bench suite --herald target/release/herald --out bench/results "$@"
