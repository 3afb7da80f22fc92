-- A batch's messages with a key claim directly no more at an endpoint than the room the
-- batch was offered there (issue 18, found in review).
--
-- herald.enqueue_many sent each keyed message through herald.enqueue with the endpoints
-- that had no room when the batch was offered, not counting what the batch itself had
-- claimed since: at an endpoint with room for one, every keyed message of the batch was
-- claimed directly, past the endpoint's default concurrency. Now each keyed message is
-- offered an endpoint only while what the batch claimed there (keyed or not) is under its
-- room. Everything else is as in 0026. A function replaced in place: no table is touched.

create or replace function herald.enqueue_many(
    p_apps text[],
    p_event_types text[],
    p_payloads text[],
    p_channels text[],
    p_keys text[],
    p_worker uuid,
    p_lease_secs float8,
    p_room int,
    p_room_endpoints uuid[],
    p_rooms int[]
)
returns table (ord int, message herald.message, claimed json, pending_endpoints uuid[])
language plpgsql
set search_path = herald, pg_temp
set lock_timeout = '250ms'
as $$
#variable_conflict use_column
declare
    v_floor uuid;
    v_app_ids uuid[];
    v_notify boolean := false;
    v_row record;
    v_item record;
    -- With keys in the batch: the endpoints claimed directly so far, once per delivery.
    v_keyed boolean := exists (select 1 from unnest(p_keys) k where k is not null);
    v_claimed uuid[] := '{}';
begin
    if cardinality(p_apps) is distinct from cardinality(p_event_types)
       or cardinality(p_apps) is distinct from cardinality(p_payloads)
       or cardinality(p_apps) is distinct from cardinality(p_channels)
       or cardinality(p_apps) is distinct from cardinality(p_keys) then
        raise exception 'herald: enqueue_many needs arrays of one length'
            using errcode = 'invalid_parameter_value';
    end if;
    select floor_id into v_floor from live_floor;
    -- Each message's application, once: an `app_…` id or a uid, as herald.enqueue reads it.
    select array_agg(a.app_id order by i.ord) into v_app_ids
      from unnest(p_apps) with ordinality as i(app, ord)
     cross join lateral (
           select case when i.app ~ '^app_[0-9a-f]{32}$'
                       then (select a.id from application a
                              where a.id = substring(i.app from 5)::uuid
                                and a.removed_at is null)
                       else (select a.id from application a where a.uid = i.app)
                  end as app_id) a;

    -- As herald.enqueue, for every message without a key at once.
    for v_row in
        with item as materialized (
            select i.ord::int as ord, herald.uuid_v7() as id, i.app_id, i.event_type,
                   i.payload::json as payload,
                   coalesce(string_to_array(i.channels, ' '), '{}') as channels
              from unnest(v_app_ids, p_event_types, p_payloads, p_channels, p_keys)
                   with ordinality as i(app_id, event_type, payload, channels, key, ord)
             where i.key is null
        ),
        stored as (
            insert into message (id, app_id, event_type, payload, idempotency_key, channels)
            select i.id, i.app_id, i.event_type, i.payload, null, nullif(i.channels, '{}')
              from item i
             where i.app_id is not null
             order by i.ord
            returning *
        ),
        route as (
            -- The endpoints each kind of message in the batch reaches (its application, type
            -- and channels), and whether each is sent to directly: looked up once per kind,
            -- however many of the batch's messages are of it. A filter is the payload's to
            -- meet, below.
            select k.app_id, k.event_type, k.channels, e.id as endpoint_id, e.filter, x.direct,
                   x.room
              from (select distinct i.app_id, i.event_type, i.channels
                      from item i where i.app_id is not null) k
             cross join lateral (
                   select herald.type_routes(k.app_id, k.event_type) as types,
                          herald.channel_routes(k.app_id, k.channels) as channels
                   offset 0) r
             cross join lateral (
                   select e.id, e.max_in_flight, e.rate_limit, e.filter
                     from endpoint e
                    where e.app_id = k.app_id
                      and not e.disabled
                      and e.routes && r.types
                      and e.routes && r.channels) e
             cross join lateral (
                   select p_worker is not null
                          and e.max_in_flight is null
                          and e.rate_limit is null
                          and not exists (select 1 from delivery q
                                           where q.endpoint_id = e.id and q.state = 'pending'
                                             and q.next_attempt_at <= now()
                                             and q.id >= v_floor) as direct,
                          coalesce((select r.room
                                      from unnest(p_room_endpoints, p_rooms)
                                           as r(endpoint_id, room)
                                     where r.endpoint_id = e.id), p_room) as room
                   offset 0) x
        ),
        inserted as (
            insert into delivery (id, message_id, endpoint_id, state, attempt_count, locked_by,
                                  lease_expires_at)
            select herald.uuid_v7_at(c.message_id), c.message_id, c.endpoint_id,
                   case when c.direct then 'in_flight' else 'pending' end::delivery_state,
                   case when c.direct then 1 else 0 end,
                   case when c.direct then p_worker end,
                   case when c.direct then now() + make_interval(secs => p_lease_secs) end
              from (
                   -- An endpoint gets no more direct deliveries from the batch than the
                   -- offering process has room for there; the rest of the batch's are queued.
                   select m.id as message_id, r.endpoint_id,
                          r.direct
                          and row_number() over (partition by r.endpoint_id order by m.id)
                              <= r.room as direct
                     from stored m
                     join route r
                       on r.app_id = m.app_id and r.event_type = m.event_type
                      and r.channels = coalesce(m.channels, '{}')
                    where r.filter is null
                       or r.filter <@ (select herald.jsonb_or_null(m.payload))) c
            returning id, message_id, endpoint_id, state
        ),
        per_message as (
            select i.message_id,
                   coalesce(array_agg(i.endpoint_id) filter (where i.state = 'pending'), '{}')
                       as pending_endpoints,
                   coalesce(json_agg(json_build_object(
                                'id', i.id, 'endpoint_id', i.endpoint_id, 'url', e.url,
                                'headers', e.headers, 'secrets', e.secrets,
                                'max_in_flight', e.max_in_flight))
                            filter (where i.state = 'in_flight'), '[]') as claimed
              from inserted i
             -- What sending needs, read for the deliveries claimed here only.
             left join lateral (
                   select e.url, e.headers, e.max_in_flight,
                          array(select s.secret from endpoint_secret s
                                 where s.endpoint_id = e.id
                                   and (s.expires_at is null or s.expires_at > now())
                                 order by s.created_at desc) as secrets
                     from endpoint e
                    where e.id = i.endpoint_id and i.state = 'in_flight' offset 0) e on true
             group by i.message_id
        )
        select i.ord, m::herald.message as message, coalesce(p.claimed, '[]') as claimed,
               coalesce(p.pending_endpoints, '{}') as pending_endpoints
          from item i
          join stored m on m.id = i.id
          left join per_message p on p.message_id = m.id
         order by i.ord
    loop
        ord := v_row.ord;
        message := v_row.message;
        claimed := v_row.claimed;
        pending_endpoints := v_row.pending_endpoints;
        v_notify := v_notify or cardinality(pending_endpoints) > 0;
        if v_keyed then
            v_claimed := v_claimed || array(select (c->>'endpoint_id')::uuid
                                              from json_array_elements(claimed) c);
        end if;
        return next;
    end loop;
    if v_notify then
        perform pg_notify('herald_delivery', '');
    end if;

    -- Messages with a key, one at a time. Those of an unknown application are left out
    -- first, so that herald.enqueue's refusal cannot fail the batch.
    for v_item in
        select i.ord::int as ord, i.app, i.event_type, i.payload, i.channels, i.key
          from unnest(p_apps, v_app_ids, p_event_types, p_payloads, p_channels, p_keys)
               with ordinality as i(app, app_id, event_type, payload, channels, key, ord)
         where i.key is not null and i.app_id is not null
         order by i.app_id, i.key, i.ord
    loop
        ord := v_item.ord;
        select q.message, q.claimed, q.pending_endpoints into v_row
          from herald.enqueue(v_item.app, v_item.event_type, v_item.payload::json, v_item.key,
                              p_worker, p_lease_secs,
                              -- Busy: no room left, counting what the batch already
                              -- claimed there.
                              array(select r.endpoint_id
                                      from unnest(p_room_endpoints, p_rooms)
                                           as r(endpoint_id, room)
                                     where r.room <= 0
                                    union
                                    select c.endpoint_id
                                      from unnest(v_claimed) as c(endpoint_id)
                                     group by c.endpoint_id
                                    having count(*) >= coalesce(
                                               (select r.room
                                                  from unnest(p_room_endpoints, p_rooms)
                                                       as r(endpoint_id, room)
                                                 where r.endpoint_id = c.endpoint_id),
                                               p_room)),
                              coalesce(string_to_array(v_item.channels, ' '), '{}')) q;
        message := v_row.message;
        claimed := v_row.claimed;
        pending_endpoints := v_row.pending_endpoints;
        v_claimed := v_claimed || array(select (c->>'endpoint_id')::uuid
                                          from json_array_elements(claimed) c);
        return next;
    end loop;
end
$$;
