-- herald.enqueue_batch: herald.enqueue_many (0028) at a cost linear in the batch (issue 18).
--
-- Measured on the burst's database, one client, the same 20 and 64 messages (pgbench, each
-- call rolled back): enqueue_many took 2.5 and 10.3 ms, superlinear in the batch, because
-- the planner, expecting one row from every CTE, (1) looked the routes up once per message,
-- not once per kind of message, (2) matched the answer's rows to their messages and to their
-- deliveries by nested loops over the CTEs, and (3) the answer went through a row-by-row
-- PL/pgSQL loop that built a JSON object per claimed delivery. Here the routes and what
-- sending to an endpoint needs are each read once per batch (materialized), and the answer
-- is one row per message and one per delivery, straight from what the statement inserted.
-- A message's place is found again from its id by array_position over the batch's ids (a
-- scan, but of at most the writer's 256 messages, once per message, not per delivery).
--
-- The answer: for each message stored (or, for one with a key, found), a row with its place
-- in the batch (`ord`, from 1), id, application and created_at, and no endpoint; for each of
-- its deliveries, a row with the message's id (and, for a message with a key, its ord: an
-- earlier message may answer two of them) and the delivery's endpoint, whether it was
-- claimed for p_worker (`direct`) and, if so, its id and what sending it needs. A
-- message without a key is the caller's own: its type, channels and payload are not sent
-- back. One with a key may be an earlier message: it comes whole, as `keyed`.
--
-- enqueue_many stays, unchanged, for processes of the previous release during a rolling
-- upgrade; Herald no longer calls it.

create function herald.enqueue_batch(
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
returns table (ord int, message_id uuid, app_id uuid, created_at timestamptz,
               keyed herald.message, endpoint_id uuid, direct boolean, delivery_id uuid,
               url text, headers jsonb, secrets text[], max_in_flight int)
language plpgsql
set search_path = herald, pg_temp
set lock_timeout = '250ms'
as $$
#variable_conflict use_column
declare
    v_floor uuid;
    v_app_ids uuid[];
    -- The id of each message without a key, by its place in the batch.
    v_ids uuid[];
    v_row record;
    v_item record;
    -- With keys in the batch: the endpoints claimed directly so far, once per delivery.
    v_claimed uuid[];
begin
    if cardinality(p_apps) is distinct from cardinality(p_event_types)
       or cardinality(p_apps) is distinct from cardinality(p_payloads)
       or cardinality(p_apps) is distinct from cardinality(p_channels)
       or cardinality(p_apps) is distinct from cardinality(p_keys) then
        raise exception 'herald: enqueue_batch needs arrays of one length'
            using errcode = 'invalid_parameter_value';
    end if;
    select floor_id into v_floor from live_floor;
    -- Each message's application (an `app_…` id or a uid, as herald.enqueue reads it), each
    -- distinct one looked up once; and the id of each message without a key.
    with named as (
        select n.app,
               case when n.app ~ '^app_[0-9a-f]{32}$'
                    then (select a.id from application a
                           where a.id = substring(n.app from 5)::uuid
                             and a.removed_at is null)
                    else (select a.id from application a where a.uid = n.app)
               end as app_id
          from (select distinct i.app from unnest(p_apps) as i(app)) n
    )
    select array_agg(n.app_id order by i.ord),
           array_agg(case when i.key is null then herald.uuid_v7() end order by i.ord)
      into v_app_ids, v_ids
      from unnest(p_apps, p_keys) with ordinality as i(app, key, ord)
      left join named n on n.app = i.app;

    -- As herald.enqueue, for every message without a key at once.
    return query
    with item as materialized (
        select i.ord::int as ord, v_ids[i.ord] as id, i.app_id, i.event_type,
               i.payload::json as payload,
               coalesce(string_to_array(i.channels, ' '), '{}') as channels
          from unnest(v_app_ids, p_event_types, p_payloads, p_channels, p_keys)
               with ordinality as i(app_id, event_type, payload, channels, key, ord)
         where i.key is null and i.app_id is not null
    ),
    stored as (
        insert into message (id, app_id, event_type, payload, idempotency_key, channels)
        select i.id, i.app_id, i.event_type, i.payload, null, nullif(i.channels, '{}')
          from item i
         order by i.ord
        returning id, app_id, event_type, channels, payload, created_at
    ),
    route as materialized (
        -- The endpoints each kind of message in the batch reaches (its application, type
        -- and channels), and whether each is sent to directly: once per kind, however many
        -- of the batch's messages are of it. A filter is the payload's to meet, below.
        select k.app_id, k.event_type, k.channels, e.id as endpoint_id, e.filter, x.direct,
               x.room
          from (select distinct i.app_id, i.event_type, i.channels from item i) k
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
    sending as materialized (
        -- What sending needs, for each endpoint the batch may send to directly: once.
        select e.id, e.url, e.headers, e.max_in_flight,
               array(select s.secret from endpoint_secret s
                      where s.endpoint_id = e.id
                        and (s.expires_at is null or s.expires_at > now())
                      order by s.created_at desc) as secrets
          from endpoint e
         where e.id in (select r.endpoint_id from route r where r.direct)
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
    announced as (
        -- Queued deliveries are announced to the workers, once (at commit).
        select pg_notify('herald_delivery', '')
          from inserted d where d.state = 'pending' limit 1
    )
    select array_position(v_ids, m.id), m.id, m.app_id, m.created_at, null::message,
           null::uuid, null::boolean, null::uuid, null::text, null::jsonb, null::text[],
           null::int
      from stored m
    union all
    -- A delivery's message by its id, not its place (which the caller has from the
    -- message's row): a place found by array_position would cost the batch's length per
    -- delivery.
    select null::int, d.message_id, null, null, null,
           d.endpoint_id, d.state = 'in_flight', d.id, s.url, s.headers, s.secrets,
           s.max_in_flight
      from inserted d
      left join sending s on s.id = d.endpoint_id and d.state = 'in_flight'
     -- Always true, and evaluated once (a one-time filter): what makes `announced` run.
     where (select count(*) from announced) >= 0;

    if not exists (select 1 from unnest(p_keys) k where k is not null) then
        return;
    end if;
    -- Messages with a key, one at a time, each offered an endpoint only while what the
    -- batch claimed there (keyed or not) is under its room. Those of an unknown application
    -- are left out first, so that herald.enqueue's refusal cannot fail the batch.
    v_claimed := array(select d.endpoint_id from delivery d
                        where d.message_id = any(v_ids) and d.state = 'in_flight'
                          and d.locked_by = p_worker);
    for v_item in
        select i.ord::int as ord, i.app, i.event_type, i.payload, i.channels, i.key
          from unnest(p_apps, v_app_ids, p_event_types, p_payloads, p_channels, p_keys)
               with ordinality as i(app, app_id, event_type, payload, channels, key, ord)
         where i.key is not null and i.app_id is not null
         order by i.app_id, i.key, i.ord
    loop
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
        return query
        select v_item.ord, (v_row.message).id, (v_row.message).app_id,
               (v_row.message).created_at, v_row.message, null::uuid, null::boolean,
               null::uuid, null::text, null::jsonb, null::text[], null::int
        union all
        select v_item.ord, (v_row.message).id, null, null, null, c.endpoint_id, true, c.id,
               c.url, c.headers, c.secrets, c.max_in_flight
          from json_to_recordset(v_row.claimed)
               as c(id uuid, endpoint_id uuid, url text, headers jsonb, secrets text[],
                    max_in_flight int)
        union all
        select v_item.ord, (v_row.message).id, null, null, null, p.endpoint_id, false, null,
               null, null, null, null
          from unnest(v_row.pending_endpoints) as p(endpoint_id);
        v_claimed := v_claimed || array(select (c->>'endpoint_id')::uuid
                                          from json_array_elements(v_row.claimed) c);
    end loop;
end
$$;
