-- Idempotency keys are honoured for a window (HERALD_IDEMPOTENCY_WINDOW, default 24 h), not
-- forever: a key repeated within it answers the message it first sent and queues nothing;
-- repeated after it, the key moves to a new message, which is sent (the old message keeps
-- everything but its key, which reads null from then on). The unique index on (app_id,
-- idempotency_key) stays what makes one key one message, so concurrent sends of a key still
-- agree without any lock of their own, whatever the isolation level (a conflict there is an
-- error, never a second message).
--
-- The window comes from the setting herald.idempotency_window, which Herald sets on each of
-- its connections; a backend calling herald.send_message from its own connection gets 24
-- hours unless it sets it (`set herald.idempotency_window = '1 hour'`).
--
-- Replaces herald.enqueue from 0004; only the idempotency part differs.

create function herald.idempotency_window() returns interval
language plpgsql stable
as $$
declare
    v_window interval := coalesce(nullif(current_setting('herald.idempotency_window', true), ''),
                                  '24 hours')::interval;
begin
    if v_window <= interval '0' then
        raise exception 'herald: herald.idempotency_window must be positive, not %', v_window
            using errcode = 'invalid_parameter_value';
    end if;
    return v_window;
end
$$;

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
        if message.created_at > now() - herald.idempotency_window() then
            claimed := '[]';
            pending_endpoints := '{}';
            return;
        end if;
        -- The key's window is over: it moves to a new message. The old one's row lock
        -- makes concurrent sends of the key wait here; each that comes after finds the key
        -- gone from it, and the insert below answers the new message through the unique
        -- index, as within a window.
        update herald.message m set idempotency_key = null
         where m.id = message.id and m.idempotency_key = p_idempotency_key;
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
    end if;

    -- An endpoint is sent to directly only if nothing of its is due and waiting (no
    -- queue jumping), the offering process is not already at the endpoint's cap
    -- (p_busy_endpoints: the process counts its own requests; counting everyone's here
    -- would cost every send a scan), and it sets no limit of its own: an explicit cap or a
    -- rate limit is a promise to the receiver, kept exactly by the claim alone.
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
                      and e.max_in_flight is null
                      and e.rate_limit is null
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
