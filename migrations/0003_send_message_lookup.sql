-- herald.send_message looked an application up with
--   uid = p_app or (p_app ~ '^app_…' and id = substring(p_app from 5)::uuid)
-- but SQL does not promise to evaluate the regex test first: under a generic plan the cast
-- ran on a uid and failed. Decide in PL/pgSQL, where the order is ours.
create or replace function herald.send_message(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text default null
) returns herald.message
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_app_id uuid;
    v_message herald.message;
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

    insert into message (app_id, event_type, payload, idempotency_key)
    values (v_app_id, p_event_type, p_payload, p_idempotency_key)
    on conflict (app_id, idempotency_key) where idempotency_key is not null do nothing
    returning * into v_message;

    if v_message.id is null then
        select * into v_message from message
         where app_id = v_app_id and idempotency_key = p_idempotency_key;
        return v_message;
    end if;

    insert into delivery (message_id, endpoint_id)
    select v_message.id, e.id
      from endpoint e
     where e.app_id = v_app_id
       and not e.disabled
       and (cardinality(e.event_types) = 0 or p_event_type = any (e.event_types));

    if found then
        perform pg_notify('herald_delivery', '');
    end if;
    return v_message;
end
$$;
