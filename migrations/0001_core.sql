-- Herald lives in its own schema so it can share a database with the SaaS that feeds it.
-- Every Herald connection sets search_path = herald; objects called from outside are
-- schema-qualified (herald.send_message).

-- Time-ordered UUIDs (version 7). PostgreSQL 15 has no built-in, and ids generated in SQL
-- (by herald.send_message) must sort with the ones generated in Rust.
create function herald.uuid_v7() returns uuid
language sql volatile parallel safe as $$
  select encode(
    set_bit(
      set_bit(
        overlay(uuid_send(gen_random_uuid())
                placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                from 1 for 6),
        52, 1),
      53, 1),
    'hex')::uuid
$$;

create table herald.application (
    id          uuid primary key default herald.uuid_v7(),
    uid         text unique check (uid ~ '^[A-Za-z0-9_.:-]+$' and length(uid) <= 256),
    name        text not null check (length(name) between 1 and 256),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table herald.endpoint (
    id              uuid primary key default herald.uuid_v7(),
    app_id          uuid not null references herald.application (id) on delete cascade,
    url             text not null,
    description     text not null default '',
    event_types     text[] not null default '{}',
    disabled        boolean not null default false,
    disabled_reason text,
    -- Per-endpoint cap on concurrent requests; null means the server default.
    max_in_flight   integer check (max_in_flight between 1 and 1000),
    headers         jsonb not null default '{}',
    -- Start of the current run of consecutive failures; drives automatic disabling.
    failing_since   timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index endpoint_app on herald.endpoint (app_id, id);

-- Signing secrets. The current one has expires_at null; a rotated-out one stays valid
-- (and is signed with) until expires_at.
create table herald.endpoint_secret (
    id          uuid primary key default herald.uuid_v7(),
    endpoint_id uuid not null references herald.endpoint (id) on delete cascade,
    secret      text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz
);
create index endpoint_secret_endpoint on herald.endpoint_secret (endpoint_id);
create unique index endpoint_secret_current on herald.endpoint_secret (endpoint_id) where expires_at is null;

create table herald.message (
    id              uuid primary key default herald.uuid_v7(),
    app_id          uuid not null references herald.application (id) on delete cascade,
    event_type      text not null check (event_type ~ '^[A-Za-z0-9_.-]+$' and length(event_type) <= 256),
    -- json, not jsonb: the receiver gets the exact text the sender gave.
    payload         json not null,
    idempotency_key text check (length(idempotency_key) between 1 and 256),
    created_at      timestamptz not null default now()
);
create index message_app on herald.message (app_id, id);
-- Most messages carry no idempotency key: index only those that do.
create unique index message_idempotency on herald.message (app_id, idempotency_key)
    where idempotency_key is not null;

create type herald.delivery_state as enum ('pending', 'in_flight', 'succeeded', 'dead');

-- The outbox: one row per (message x matching endpoint).
create table herald.delivery (
    id               uuid primary key default herald.uuid_v7(),
    message_id       uuid not null references herald.message (id) on delete cascade,
    endpoint_id      uuid not null references herald.endpoint (id) on delete cascade,
    state            herald.delivery_state not null default 'pending',
    attempt_count    integer not null default 0,
    next_attempt_at  timestamptz not null default now(),
    locked_by        uuid,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);
-- Workers claim endpoint by endpoint (db/deliveries.rs): each endpoint's due rows are
-- found through this index, so an endpoint at its in-flight cap costs a claim one index
-- probe instead of a walk past its whole backlog.
create index delivery_endpoint_pending on herald.delivery (endpoint_id, next_attempt_at)
    where state = 'pending';
-- What each endpoint has in flight (its cap), and expired leases (the sweep).
create index delivery_in_flight on herald.delivery (endpoint_id) where state = 'in_flight';
create index delivery_message on herald.delivery (message_id);
create index delivery_endpoint on herald.delivery (endpoint_id, id);

create type herald.attempt_trigger as enum ('scheduled', 'replay');
create type herald.attempt_outcome as enum ('succeeded', 'retrying', 'dead');

-- One row per HTTP try. message/endpoint/app are copied from the delivery so attempt
-- listings need no joins.
create table herald.attempt (
    id              uuid primary key default herald.uuid_v7(),
    delivery_id     uuid not null references herald.delivery (id) on delete cascade,
    message_id      uuid not null,
    endpoint_id     uuid not null,
    app_id          uuid not null,
    attempt         integer not null,
    trigger         herald.attempt_trigger not null,
    outcome         herald.attempt_outcome not null,
    response_status integer,
    response_body   text,
    error_kind      text,
    error           text,
    duration_ms     integer not null,
    created_at      timestamptz not null,
    next_attempt_at timestamptz
);
create index attempt_message on herald.attempt (message_id, id);
create index attempt_endpoint on herald.attempt (endpoint_id, id);
create index attempt_delivery on herald.attempt (delivery_id);

-- The outbox entry point. Stores a message and one delivery per matching enabled endpoint
-- in the caller's transaction, and announces queued deliveries with NOTIFY. p_app is an
-- application id (app_...) or uid; a repeated idempotency key returns the original message
-- and queues nothing.
--
-- Direct dispatch: when the API process that accepts a message has workers free it passes
-- p_worker, and the deliveries of endpoints with no backlog are inserted already claimed by
-- that process (in flight, under a lease). The process sends them right after the commit:
-- no NOTIFY, no claim round trip, no pending -> in_flight update. If it dies first, the
-- lease expires and the sweep hands them to any worker.
create function herald.enqueue(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text,
    p_worker uuid,
    p_lease_secs float8,
    p_busy_endpoints uuid[],
    out message herald.message,
    out claimed json,
    out pending_endpoints uuid[]
)
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_app_id uuid;
begin
    if p_app ~ '^app_[0-9a-f]{32}$' then
        select id into v_app_id from application where id = substring(p_app from 5)::uuid;
    else
        select id into v_app_id from application where uid = p_app;
    end if;
    if v_app_id is null then
        raise exception 'herald: application % not found', p_app
            using errcode = 'no_data_found';
    end if;

    insert into herald.message (app_id, event_type, payload, idempotency_key)
    values (v_app_id, p_event_type, p_payload, p_idempotency_key)
    on conflict (app_id, idempotency_key) where idempotency_key is not null do nothing
    returning * into message;

    if message.id is null then
        select * into message from herald.message m
         where m.app_id = v_app_id and m.idempotency_key = p_idempotency_key;
        claimed := '[]';
        pending_endpoints := '{}';
        return;
    end if;

    -- An endpoint is sent to directly only if nothing of its is due and waiting (no
    -- queue jumping) and the offering process is not already at the endpoint's cap
    -- (p_busy_endpoints: the process counts its own requests; counting everyone's here
    -- would cost every send a scan).
    with inserted as (
        insert into delivery (message_id, endpoint_id, state, attempt_count, locked_by,
                              lease_expires_at)
        select message.id, e.id,
               case when x.direct then 'in_flight' else 'pending' end::delivery_state,
               case when x.direct then 1 else 0 end,
               case when x.direct then p_worker end,
               case when x.direct then now() + make_interval(secs => p_lease_secs) end
          from endpoint e
         cross join lateral (
               select p_worker is not null
                      and e.id <> all (p_busy_endpoints)
                      and not exists (select 1 from delivery q
                                       where q.endpoint_id = e.id and q.state = 'pending'
                                         and q.next_attempt_at <= now()) as direct
               offset 0) x
         where e.app_id = v_app_id
           and not e.disabled
           and (cardinality(e.event_types) = 0 or p_event_type = any (e.event_types))
        returning id, endpoint_id, state
    )
    select coalesce(array_agg(i.endpoint_id) filter (where i.state = 'pending'), '{}'),
           coalesce(json_agg(json_build_object(
                        'id', i.id, 'endpoint_id', i.endpoint_id, 'url', e.url,
                        'headers', e.headers, 'secrets', e.secrets,
                        'max_in_flight', e.max_in_flight))
                    filter (where i.state = 'in_flight'), '[]')
      into pending_endpoints, claimed
      from inserted i
     cross join lateral (
           select e.url, e.headers, e.max_in_flight,
                  array(select s.secret from endpoint_secret s
                         where s.endpoint_id = e.id
                           and (s.expires_at is null or s.expires_at > now())
                         order by s.created_at desc) as secrets
             from endpoint e where e.id = i.endpoint_id offset 0) e;

    if cardinality(pending_endpoints) > 0 then
        perform pg_notify('herald_delivery', '');
    end if;
end
$$;


-- For a backend that shares the database: call it inside your own transaction and the
-- event is delivered if and only if that transaction commits.
--
--   select herald.message_ref(id) from herald.send_message('customer-42', 'invoice.paid',
--                                                          '{"invoice": "in_1"}', 'inv_1-paid');
create function herald.send_message(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text default null
) returns herald.message
language sql
set search_path = herald, pg_temp
as $$
    select message from herald.enqueue(p_app, p_event_type, p_payload, p_idempotency_key,
                                       null, null, '{}')
$$;

-- The public form of a message id, as the API and the webhook-id header show it.
create function herald.message_ref(p_id uuid) returns text
language sql immutable parallel safe
as $$ select 'msg_' || replace(p_id::text, '-', '') $$;
