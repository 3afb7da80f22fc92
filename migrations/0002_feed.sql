-- The live feed (GET /api/v1/stream) reads this log of what happened. Triggers write it in
-- the same transaction as the change itself, so the feed sees exactly what committed,
-- whoever wrote it: a worker, the API, or a backend calling herald.send_message.
--
-- Order. A sequence number is handed out at insert, not at commit, so a reader that
-- resumed "after seq 41" could miss a 40 that committed later. Events are therefore
-- ordered by (xid, seq), where xid is the writing transaction's id, and a reader only
-- ever emits events whose xid is below the xmin of its own snapshot: every transaction
-- with such an xid has ended, so nothing can later appear before an emitted event.
-- Events of still-running (or just-committed but younger-than-xmin) transactions wait a
-- few milliseconds until the horizon passes them. Positions are therefore final the
-- moment they are emitted, on every Herald process alike.
create type herald.event_kind as enum
    ('message.created', 'attempt', 'delivery.dead', 'endpoint.disabled');

create table herald.event (
    xid         xid8 not null default pg_current_xact_id(),
    seq         bigint generated always as identity,
    kind        herald.event_kind not null,
    app_id      uuid not null,
    endpoint_id uuid,
    event_type  text,
    outcome     herald.attempt_outcome,
    -- The message, attempt, delivery or endpoint the event is about; the reader renders
    -- it from that row, so the log stays small.
    ref_id      uuid not null,
    created_at  timestamptz not null default now(),
    primary key (xid, seq)
);
-- Pruning deletes by age; the log is appended in time order, which BRIN suits.
create index event_created on herald.event using brin (created_at);

create function herald.feed_message_created() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    insert into event (kind, app_id, event_type, ref_id)
    select 'message.created', n.app_id, n.event_type, n.id from inserted n order by n.id;
    return null;
end
$$;

create trigger feed_message_created after insert on herald.message
    referencing new table as inserted
    for each statement execute function herald.feed_message_created();

create function herald.feed_attempt() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    insert into event (kind, app_id, endpoint_id, event_type, outcome, ref_id)
    select 'attempt', n.app_id, n.endpoint_id, m.event_type, n.outcome, n.id
      from inserted n
     cross join lateral (select m.event_type from message m where m.id = n.message_id) m
     order by n.id;
    -- Wakes the feed readers of other processes; NOTIFY is sent at commit, once per
    -- transaction however many rows it wrote.
    perform pg_notify('herald_feed', '');
    return null;
end
$$;

create trigger feed_attempt after insert on herald.attempt
    referencing new table as inserted
    for each statement execute function herald.feed_attempt();

-- Row triggers with a WHEN clause: the hot updates of delivery (claims, completions) only
-- pay for evaluating the condition.
create function herald.feed_delivery_dead() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    insert into event (kind, app_id, endpoint_id, event_type, ref_id)
    select 'delivery.dead', m.app_id, new.endpoint_id, m.event_type, new.id
      from message m where m.id = new.message_id;
    perform pg_notify('herald_feed', '');
    return null;
end
$$;

-- Deferred to commit, so a delivery's end follows the attempt that ended it in the feed
-- (the worker updates the delivery before it inserts the attempt).
create constraint trigger feed_delivery_dead after update of state on herald.delivery
    deferrable initially deferred
    for each row when (new.state = 'dead' and old.state <> 'dead')
    execute function herald.feed_delivery_dead();

create function herald.feed_endpoint_disabled() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    insert into event (kind, app_id, endpoint_id, ref_id)
    values ('endpoint.disabled', new.app_id, new.id, new.id);
    perform pg_notify('herald_feed', '');
    return null;
end
$$;

create trigger feed_endpoint_disabled after update of disabled on herald.endpoint
    for each row when (new.disabled and not old.disabled)
    execute function herald.feed_endpoint_disabled();

-- The smallest UUIDv7 of a moment: attempts and deliveries have time-ordered ids, so "since
-- t" is a range scan of the primary key (the dashboard's charts and rates).
create function herald.uuid_v7_floor(p_at timestamptz) returns uuid
language sql immutable parallel safe as $$
  select encode(overlay('\x00000000000070008000000000000000'::bytea
                        placing substring(int8send((extract(epoch from p_at) * 1000)::bigint) from 3)
                        from 1 for 6), 'hex')::uuid
$$;

-- Dead letters, newest first, without walking the whole outbox.
create index delivery_dead on herald.delivery (id) where state = 'dead';
