-- no-transaction
-- Idempotency keys are honoured for a window (HERALD_IDEMPOTENCY_WINDOW), no longer forever:
-- after it, a repeated key creates a new message. This is the index the window's lookup
-- reads; migration 0010 switches herald.enqueue over to it and drops the unique index
-- `message_idempotency` (which would refuse the second message of a key).
--
-- Not unique, and ending in `id`, for the partitioned history to come (issue 14): the
-- message table will be range-partitioned on its UUIDv7 `id`, and PostgreSQL cannot enforce
-- a unique index across partitions unless it includes the partition key, which
-- (app_id, idempotency_key) does not. So uniqueness within the window is kept by the
-- function instead (an advisory lock per key, then a lookup bounded by
-- `id >= herald.uuid_v7_floor(now() - window)`, see 0010), and that bound on `id` both walks
-- only the window's end of this index and lets partition pruning skip old partitions.
--
-- Built concurrently, outside a transaction (sqlx runs a file whose first line is
-- `-- no-transaction` that way): on a table of millions of messages it never blocks sends,
-- it only waits for the transactions already open when it starts. That is also why this
-- file holds one statement: several statements in one file would run as one implicit
-- transaction, which CONCURRENTLY refuses. A build that is interrupted (the process killed,
-- the database restarted) leaves an invalid index behind and this migration unrecorded:
-- herald's migrate (src/db/mod.rs) drops such a leftover before it runs the migrations again.
create index concurrently message_idempotency_window
    on herald.message (app_id, idempotency_key, id)
    where idempotency_key is not null;
