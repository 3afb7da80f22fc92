-- Replays (DESIGN §2 "Replay"). A delivery sent again on request keeps its row, and so its
-- message's webhook-id: it goes back to pending, due now, its attempts are marked
-- trigger 'replay', and its retry schedule starts over from retry_base (the attempts it
-- had already made when it was replayed).
alter table herald.delivery
    add column trigger herald.attempt_trigger not null default 'scheduled',
    add column retry_base integer not null default 0;

-- One delivery per (message, endpoint): a replay to an endpoint that joined after the
-- message arrived adds one, a replay to any other reuses it.
create unique index delivery_message_endpoint on herald.delivery (message_id, endpoint_id);
drop index herald.delivery_message;

-- What a recover walks: an endpoint's dead deliveries in a time window (ids are time
-- ordered).
create index delivery_endpoint_dead on herald.delivery (endpoint_id, id) where state = 'dead';

-- A recover, persisted: it runs in batches that each commit with the cursor, under a lease,
-- so a restart part-way resumes where it was (any process may take it over), and nothing is
-- replayed twice by it or skipped.
create table herald.recovery (
    id               uuid primary key default herald.uuid_v7(),
    app_id           uuid not null references herald.application (id) on delete cascade,
    endpoint_id      uuid not null references herald.endpoint (id) on delete cascade,
    since            timestamptz not null,
    until            timestamptz not null,
    -- Dead deliveries in the window when the recover was asked for.
    total            integer not null,
    queued           integer not null default 0,
    -- The last delivery id handled; the next batch starts after it.
    cursor           uuid,
    finished_at      timestamptz,
    locked_by        uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz not null default now()
);
create index recovery_unfinished on herald.recovery (lease_expires_at) where finished_at is null;
