# Herald: `make run` starts it, `make test` proves it. Both set up everything they need,
# including a private PostgreSQL when DATABASE_URL is not set.
SHELL := bash

.PHONY: run test chaos bench db-stop fmt lint

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

# Stops the development database that `make run` started.
db-stop:
	scripts/pg.sh stop .data/pg

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
