-- no-transaction
-- The index herald.enqueue finds the endpoints a message reaches by (migration 0023): the
-- keys of each enabled endpoint's event-type patterns and channels, each key prefixed with
-- its application. A send's two `&&` conditions (its type's keys, its channels' keys) are
-- both answered by one scan of it, so a send costs the endpoints it reaches, not its
-- application's endpoints. Disabled endpoints get no deliveries and are left out.
--
-- Its cost falls on endpoint writes only (a few keys per endpoint), never on a send: without
-- `fastupdate`, a write puts its keys in place at once, instead of in a pending list that
-- every send's scan would read through until the next vacuum (claims and completions update
-- endpoint rows often: measured, 18,000 updates made a send read 298 pages instead of 17).
-- Built concurrently, alone in a `-- no-transaction` file, as 0010 explains: endpoints can
-- be changed while it is built.
create index concurrently if not exists endpoint_routes
    on herald.endpoint using gin (routes)
    with (fastupdate = off)
    where not disabled;
