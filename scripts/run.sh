#!/usr/bin/env bash
# make run: a working Herald on a fresh machine. Creates .env with an admin token on first
# run, starts a private PostgreSQL under .data/ unless DATABASE_URL is set, then serves.
set -euo pipefail
cd "$(dirname "$0")/.."

# .env holds the admin token: only its owner may read it, also when an older run or a copy
# left it readable by others. (The umask is for .env alone: under it, .data/ would be
# closed to the postgres user that runs the private cluster when we are root.)
if [ ! -f .env ]; then
  (umask 077 && cp .env.example .env)
fi
chmod 600 .env
if ! grep -q '^HERALD_ADMIN_TOKEN=.\+' .env; then
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  sed -i '/^HERALD_ADMIN_TOKEN=/d' .env
  echo "HERALD_ADMIN_TOKEN=$token" >> .env
fi
# .env fills in what the environment does not already say (the environment wins).
while IFS='=' read -r key value; do
  [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
  [ -n "${!key+x}" ] || export "$key=$value"
done < .env

if [ -z "${DATABASE_URL:-}" ]; then
  port=${HERALD_DEV_PG_PORT:-15432}
  scripts/pg.sh start .data/pg "$port"
  # Its socket is in .data/pg (mode 0700): no TCP, and no other local user gets in.
  sock=$PWD/.data/pg
  psql -h "$sock" -p "$port" -U postgres -tAc "select 1 from pg_database where datname = 'herald'" postgres | grep -q 1 \
    || psql -h "$sock" -p "$port" -U postgres -qc "create database herald" postgres
  # (The host name is required by the URL syntax; host= makes it the socket.)
  export DATABASE_URL="postgres://postgres@localhost/herald?host=$sock&port=$port"
  echo "PostgreSQL: $DATABASE_URL (data in .data/pg; stop it with: make db-stop)"
fi

cargo build --release --bin herald
echo
echo "Herald:      http://${HERALD_LISTEN:-127.0.0.1:8080}"
echo "Admin token: $HERALD_ADMIN_TOKEN"
echo
exec target/release/herald serve
