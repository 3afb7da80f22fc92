-- no-transaction
-- Partitioned history, between steps 2 and 3: the idempotency-key lookup without
-- uniqueness. A unique index on a partitioned table must contain the partition key, so
-- from 0016 on one key is one message within its window through herald.idempotency_key, and
-- this index serves the message list's search by key; 0016 drops the unique `message_idempotency`,
-- which would otherwise refuse a key repeated after its window to any message that lands
-- in the legacy partition (those of the first hour after the upgrade).
--
-- Built concurrently, alone in a `-- no-transaction` file, as 0010 explains.
create index concurrently if not exists message_idempotency_key
    on herald.message (app_id, idempotency_key)
    where idempotency_key is not null;
