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

# --baseline <commit>: that commit's Herald, built from a worktree of its own under target/
# (sharing this tree's build cache, so only what differs is compiled), run by the suite in
# turns with this build's (see bench/README.md).
args=()
baseline=""
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) baseline="$2"; shift 2 ;;
    --baseline=*) baseline="${1#--baseline=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$baseline" ]; then
  commit=$(git rev-parse --short "$baseline^{commit}")
  src="$PWD/target/baseline/src-$commit"
  bin="$PWD/target/baseline/herald-$commit"
  if [ ! -x "$bin" ]; then
    rm -rf "$src"
    git worktree prune
    git worktree add --detach "$src" "$commit" >/dev/null
    (cd "$src" && CARGO_TARGET_DIR="$PWD/../../../target" cargo build --release -p herald)
    cp target/release/herald "$bin"
    git worktree remove --force "$src"
  fi
  args+=(--baseline-herald "$bin" --baseline-name "$commit")
fi

cargo build --release -p herald -p herald-bench
target/release/herald-bench suite --herald target/release/herald --out bench/results "${args[@]}"
