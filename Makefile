# Herald: `make run` starts it, `make test` proves it. Both set up everything they need,
# including a private PostgreSQL when DATABASE_URL is not set.
SHELL := bash

.PHONY: run test chaos bench schema db-stop fmt lint

run:
	scripts/run.sh

test:
	scripts/test.sh $(ARGS)

# The long failure scenarios (kill -9 under load, a database restart, ...), skipped by
# `make test`. One at a time: one of them restarts the test cluster.
chaos:
	scripts/test.sh --run-ignored ignored-only --no-capture --test-threads 1 $(ARGS)

# Delivery speed against this machine's own ceiling; see bench/README.md.
bench:
	scripts/bench.sh $(ARGS)

# Rewrites docs/schema.sql from the migrations (commit it with a new migration); the test
# tests/api/schema.rs fails while the two differ.
schema:
	HERALD_UPDATE_SCHEMA=1 HERALD_SKIP_BROWSER_TESTS=1 scripts/test.sh -E 'test(=schema::the_committed_schema_is_what_the_migrations_make)'

# Stops the development database that `make run` started.
db-stop:
	scripts/pg.sh stop .data/pg

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
