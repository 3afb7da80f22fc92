#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for development and tests.
#
#   scripts/pg.sh start <dir> <port> [test|bench]   create if needed, start if stopped
#
# Ports sit below Linux's ephemeral range (32768+), where an outgoing connection could
# already hold them.
#   scripts/pg.sh stop  <dir>
#   scripts/pg.sh crash <dir>   stop with -m immediate (no clean shutdown)
#
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
# "dev" (the default, make run) listens on a unix socket only, in <dir> with mode 0700: only
# the cluster's owner (and root) can reach it, so trusting whoever connects there is safe.
# "test" and "bench" listen on 127.0.0.1 and trust every local user: they are throw-away
# clusters holding generated data only. "test" trades durability for speed (fsync off);
# never use it for real data. "bench" stays durable and records commit timestamps.
set -euo pipefail

for bin in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
  if [ -x "$bin/initdb" ]; then PATH="$bin:$PATH"; break; fi
done
command -v initdb >/dev/null || { echo "pg.sh: PostgreSQL server binaries (initdb) not found" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=$1 dir=$2
case "$cmd" in
  start)
    port=$3 mode=${4:-dev}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if [ "$mode" = dev ]; then
      chmod 700 "$dir"
      auth="--auth-local=trust --auth-host=reject" listen=""
    else
      auth="-A trust" listen=127.0.0.1
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      # shellcheck disable=SC2086
      as_owner initdb -D "$dir/data" -U postgres $auth -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    opts="-c listen_addresses='$listen' -p $port -k $dir -c unix_socket_permissions=0700 -c max_connections=400"
    # Per-statement timings for profiling (bench/README.md): cheap enough to leave on.
    opts="$opts -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
    if [ "$mode" = test ]; then
      opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    elif [ "$mode" = bench ]; then
      # The bench reads transactions' commit times (bench/README.md, burst sse). Takes
      # effect at start only: a running cluster keeps its own.
      opts="$opts -c track_commit_timestamp=on"
    fi
    if ! as_owner pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
      as_owner pg_ctl -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/postgres.log" >&2; exit 1; }
    fi
    ;;
  stop|crash)
    # crash: stop without a clean shutdown, as a power cut would (make chaos).
    mode=fast; [ "$cmd" = crash ] && mode=immediate
    if [ -f "$dir/data/PG_VERSION" ] && as_owner pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
      as_owner pg_ctl -D "$dir/data" -m "$mode" -w stop >/dev/null
    fi
    ;;
  *) echo "usage: $0 start <dir> <port> [dev|test|bench] | stop <dir> | crash <dir>" >&2; exit 2 ;;
esac
