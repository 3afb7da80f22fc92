-- Direct dispatch: when the API process that accepts a message has workers free, the
-- deliveries of endpoints with no backlog are inserted already claimed by that process
-- (in flight, under a lease), in the same transaction as the message. The process sends
-- them right after the commit: no NOTIFY, no claim round trip, no pending -> in_flight
-- update. If it dies first, the lease expires and the sweep hands them to any worker.
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

-- The entry point for backends sharing the database is unchanged: everything it queues
-- goes through the workers' claim.
create or replace function herald.send_message(
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
