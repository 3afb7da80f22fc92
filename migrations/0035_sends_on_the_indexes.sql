-- The sends check their deliveries' messages by index, whatever the statistics (issue 14's
-- history burst, measured again in issue 18).
--
-- Each delivery a send inserts is checked against its message by the foreign key, a
-- statement PostgreSQL plans once per connection and keeps. A partition made ahead and
-- vacuumed while still empty (by an operator's VACUUM or vacuumdb, as after pg_upgrade, by
-- autovacuum against wraparound, or by the benchmark's load) has `reltuples` 0, so the
-- check was kept as a sequential scan of the message partition, and every check then read
-- the partition as it filled: in the history burst (3,000,000 messages, 35 partitions) the
-- check ran 9,711 times at 0.93 ms and 185 buffers each, 9.1 s of the burst's 12.4 s of
-- statement time (pg_stat_statements; 7 us on an empty database), and the burst ran at
-- 47.9% of the empty database's rate.
--
-- The checks are planned inside these functions, so the functions plan with
-- `enable_seqscan = off`: every statement in them has an index to go by. `jit = off` with
-- it, as for claim_next (0034): a table without an index (`live_floor`, one row) is still
-- scanned but at the disabled plan's cost, which would have PostgreSQL compile that
-- statement just in time at every call.

alter function herald.enqueue(text, text, json, text, uuid, float8, uuid[], text[])
    set enable_seqscan = off;
alter function herald.enqueue(text, text, json, text, uuid, float8, uuid[], text[])
    set jit = off;

alter function herald.enqueue_batch(text[], text[], text[], text[], text[], uuid, float8,
                                    int, uuid[], int[])
    set enable_seqscan = off;
alter function herald.enqueue_batch(text[], text[], text[], text[], text[], uuid, float8,
                                    int, uuid[], int[])
    set jit = off;

alter function herald.enqueue_many(text[], text[], text[], text[], text[], uuid, float8,
                                   int, uuid[], int[])
    set enable_seqscan = off;
alter function herald.enqueue_many(text[], text[], text[], text[], text[], uuid, float8,
                                   int, uuid[], int[])
    set jit = off;
