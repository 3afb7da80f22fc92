-- no-transaction
-- "Show me the failures" of an endpoint (GET .../endpoints/{ep}/attempts with
-- outcome=retrying or dead, or a status outside 2xx): the endpoint's failed attempts alone,
-- newest first, so a page of them costs that page even behind millions of successes.
--
-- Partial, because `attempt` is the hottest table there is (a row per delivery attempt):
-- an attempt that succeeds, nearly every one on a healthy system, adds no entry here, so
-- the delivery path pays nothing more; a failure pays one entry. The filters this index
-- does not serve are the ones most attempts match: `succeeded` and 2xx walk the existing
-- `attempt_endpoint` (endpoint_id, id) until the page is full. Status codes are not in the
-- key: within the failures, a status filter reads past the failures of other codes, which
-- for one endpoint are few kinds. A message's attempts (a handful) need no index beyond
-- `attempt_message`.
--
-- The planner uses a partial index only for a statement that implies its predicate, and
-- the pool plans generically (a parameter implies nothing): db/attempts.rs writes
-- `outcome <> 'succeeded'` into the statement of such a search.
--
-- Ending in `id`: a local index on each partition once history is range-partitioned on
-- id (issue 14). Built concurrently, alone in a `-- no-transaction` file, as 0010 explains.
create index concurrently if not exists attempt_endpoint_failed
    on herald.attempt (endpoint_id, id)
    where outcome <> 'succeeded';
