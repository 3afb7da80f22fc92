-- Removing an application or an endpoint whose history is large (issue 14, point 4). The
-- request only marks it removed: from then on it is not found, nothing more is sent to it
-- (its endpoints are disabled, so a claimed delivery ends without a request) and an
-- application's uid is free again. Its history is then deleted in small batches, one short
-- transaction each, by whichever process takes the removal (src/db/removals.rs), and the
-- row itself goes last, with what was written meanwhile.

-- Nullable with no default: added without rewriting the tables.
alter table herald.application add column removed_at timestamptz;
alter table herald.endpoint add column removed_at timestamptz;

-- One queued or finished removal. No foreign keys: it outlives what it removes, and tells
-- whoever asked how far it got. Finished ones are kept as long as the history.
create table herald.removal (
    id           uuid primary key default herald.uuid_v7(),
    app_id       uuid not null,
    -- null: the whole application
    endpoint_id  uuid,
    requested_at timestamptz not null default now(),
    -- When a batch last ran: processes take the removal that waited longest, so one large
    -- removal does not hold up the others.
    updated_at   timestamptz not null default now(),
    finished_at  timestamptz,
    batches      bigint not null default 0,
    messages     bigint not null default 0,
    deliveries   bigint not null default 0,
    attempts     bigint not null default 0
);
create index removal_unfinished on herald.removal (updated_at) where finished_at is null;
create index removal_finished on herald.removal (finished_at) where finished_at is not null;

-- As 0016, except that an application queued for removal is not found (its uid was cleared
-- with the mark, so only the lookup by id needs the check).
create or replace function herald.enqueue(
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
    -- Once, as a value: a function in the statement would be called for each row.
    v_floor uuid := herald.live_floor();
    v_app_id uuid;
    v_id uuid;
    v_claimed_key uuid;
begin
    if p_app ~ '^app_[0-9a-f]{32}$' then
        select id into v_app_id from application
         where id = substring(p_app from 5)::uuid and removed_at is null;
    else
        select id into v_app_id from application where uid = p_app;
    end if;
    if v_app_id is null then
        raise exception 'herald: application % not found', p_app
            using errcode = 'no_data_found';
    end if;

    if p_idempotency_key is not null then
        v_id := herald.uuid_v7();
        insert into idempotency_key as k (app_id, key, message_id, created_at)
        values (v_app_id, p_idempotency_key, v_id, now())
        on conflict (app_id, key) do update
           set message_id = excluded.message_id, created_at = excluded.created_at
         where k.created_at <= now() - herald.idempotency_window()
        returning k.message_id into v_claimed_key;
        if v_claimed_key is null then
            -- The key is within its window: its message answers.
            select * into message from herald.message m
             where m.id = (select k.message_id from idempotency_key k
                            where k.app_id = v_app_id and k.key = p_idempotency_key);
            if found then
                claimed := '[]';
                pending_endpoints := '{}';
                return;
            end if;
            -- Its message is gone (its application's history was removed): send anew.
            update idempotency_key k set message_id = v_id, created_at = now()
             where k.app_id = v_app_id and k.key = p_idempotency_key;
        end if;
    end if;

    insert into herald.message (id, app_id, event_type, payload, idempotency_key)
    values (coalesce(v_id, herald.uuid_v7()), v_app_id, p_event_type, p_payload,
            p_idempotency_key)
    returning * into message;

    -- An endpoint is sent to directly only if nothing of its is due and waiting (no
    -- queue jumping), the offering process is not already at the endpoint's cap
    -- (p_busy_endpoints: the process counts its own requests; counting everyone's here
    -- would cost every send a scan), and it sets no limit of its own: an explicit cap or a
    -- rate limit is a promise to the receiver, kept exactly by the claim alone.
    with inserted as (
        insert into delivery (id, message_id, endpoint_id, state, attempt_count, locked_by,
                              lease_expires_at)
        select herald.uuid_v7_at(message.id), message.id, e.id,
               case when x.direct then 'in_flight' else 'pending' end::delivery_state,
               case when x.direct then 1 else 0 end,
               case when x.direct then p_worker end,
               case when x.direct then now() + make_interval(secs => p_lease_secs) end
          from endpoint e
         cross join lateral (
               select p_worker is not null
                      and e.id <> all (p_busy_endpoints)
                      and e.max_in_flight is null
                      and e.rate_limit is null
                      and not exists (select 1 from delivery q
                                       where q.endpoint_id = e.id and q.state = 'pending'
                                         and q.next_attempt_at <= now()
                                         and q.id >= v_floor) as direct
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
