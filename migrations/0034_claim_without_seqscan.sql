-- The claim never scans a whole partition (issue 18, found by profiling fan-out).
--
-- claim_next's statements find every row they touch through an index: the endpoints with
-- due rows by a walk over the pending index, the rows it locks and updates by id. Its plans
-- are generic and kept per connection, and a partition that filled up since its statistics
-- were taken (a new partition in its first minute, before autovacuum analyzes it) looks
-- nearly empty to the planner, which then updates the claimed rows through a sequential
-- scan of the whole partition, testing each row against the claimed ids (auto_explain:
-- 25 ms of a 29 ms claim of 145 rows, 19,855 rows read and thrown away). With sequential
-- scans disabled for the function's own statements the plan stays on the indexes whatever
-- the statistics say; a table with no usable index would still be scanned.

alter function herald.claim_next(uuid, float8, bigint, integer, bigint, uuid)
    set enable_seqscan = off;
