-- A recover also sends what an endpoint never got. Messages accepted while an endpoint is
-- disabled get no delivery for it (herald.enqueue skips disabled endpoints), so enabling it
-- again sends none of them, and a recover of dead deliveries could not find them either.
-- A recover now runs in two phases: first the endpoint's dead deliveries in the window (as
-- before, `cursor`), then the window's messages that the endpoint, as it is subscribed now,
-- has no delivery for (`missing_cursor`, over message ids), created since the endpoint was.
-- Both constant-default columns: no table rewrite. A new delivery's id carries its
-- message's time, so it falls in the window for a later recover.

alter table herald.recovery
    add column dead_done boolean not null default false,
    add column missing_cursor uuid;

-- Recovers already stored were asked for dead deliveries only (their total counts those):
-- they finish as they began.
update herald.recovery set missing_cursor = herald.uuid_v7_floor(until);
