# Herald: `make run` starts it, `make test` proves it. Both set up everything they need,
# including a private PostgreSQL when DATABASE_URL is not set.
SHELL := bash

.PHONY: run test db-stop fmt lint

run:
	scripts/run.sh

test:
	scripts/test.sh $(ARGS)

# Stops the development database that `make run` started.
db-stop:
	scripts/pg.sh stop .data/pg

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
