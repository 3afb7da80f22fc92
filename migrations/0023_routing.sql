-- Routing (issue 17): wildcard subscriptions, channels and payload filters, all decided inside
-- herald.enqueue, in the message's own transaction.
--
-- * An endpoint's `event_types` may hold patterns: `invoice.*` is every type that starts with
--   `invoice.` (at any depth), `*` every type; empty is every type, as before.
-- * A message may carry `channels`; an endpoint with channels receives only messages that carry
--   one of them, an endpoint without receives every message.
-- * An endpoint's `filter` is a JSON object the payload must contain (`@>`).
--
-- Fails rather than queues behind a long transaction: an `alter table` waiting for its
-- lock holds up every send and completion behind it. A migration that times out is not
-- recorded, and runs again at the next start.
set local lock_timeout = '10s';

-- New columns without a volatile default: adding them rewrites nothing (on the partitioned
-- message table neither), and the lock is held for an instant. A message without channels
-- keeps null there (no bytes in the row) and reads as `[]`.
alter table herald.endpoint
    add column channels text[] not null default '{}',
    add column filter jsonb,
    add column routes text[] not null default '{}';
alter table herald.message add column channels text[];

-- What an endpoint listens for, as one array of keys: `<app> t <pattern>` for each event-type
-- pattern (`*` when it has none) and `<app> c <channel>` for each channel (`*` when none).
-- A message is the keys it answers to (type_routes, channel_routes): it reaches an endpoint
-- whose keys overlap both. As `&&` on a GIN index over `routes` (migration 0024), the
-- endpoints a send reaches are found among the application's by index, not by reading each:
-- an application with thousands of endpoints, each for its own customer's channel, costs a
-- send the endpoints it reaches. The application is in each key, so one key (`* `) does not
-- match every application's endpoints.
create function herald.endpoint_routes(p_app uuid, p_event_types text[], p_channels text[])
returns text[]
language sql immutable parallel safe
as $$
    select array(select p_app::text || ' t ' || t
                   from unnest(case when cardinality(p_event_types) = 0 then '{*}'::text[]
                                    else p_event_types end) t)
        || array(select p_app::text || ' c ' || c
                   from unnest(case when cardinality(p_channels) = 0 then '{*}'::text[]
                                    else p_channels end) c)
$$;

-- The keys are kept in `routes`, written when what they are made of is: a send compares
-- arrays, it does not build them. (Built in the send's statement, they cost it 0.1 ms for a
-- one-endpoint application, measured: a non-inlined SQL function is planned again in every
-- statement that calls it.) Claims and completions update other columns, and do not fire
-- this.
create function herald.endpoint_set_routes() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    new.routes := herald.endpoint_routes(new.app_id, new.event_types, new.channels);
    return new;
end
$$;

create trigger endpoint_routes
    before insert or update of app_id, event_types, channels on herald.endpoint
    for each row execute function herald.endpoint_set_routes();

-- Endpoints are few next to messages (thousands, not millions): one statement.
update herald.endpoint set routes = herald.endpoint_routes(app_id, event_types, channels);

-- The patterns an event type answers to: `*`, each of its dotted prefixes with `.*`, and
-- itself (`a.b.c`: `*`, `a.b.c`, `a.*`, `a.b.*`), under the application's key. In plpgsql,
-- as channel_routes: called once per send, and a SQL function that cannot be inlined would
-- be planned again in every transaction (measured: 0.1 ms a send).
create function herald.type_routes(p_app uuid, p_event_type text)
returns text[]
language plpgsql immutable parallel safe
as $$
declare
    v_key text := p_app::text || ' t ';
    v_keys text[] := array[v_key || '*', v_key || p_event_type];
    v_parts text[] := string_to_array(p_event_type, '.');
    v_prefix text := '';
begin
    for i in 1 .. cardinality(v_parts) - 1 loop
        v_prefix := v_prefix || v_parts[i] || '.';
        v_keys := v_keys || (v_key || v_prefix || '*');
    end loop;
    return v_keys;
end
$$;

-- The channels a message answers to: `*` (the endpoints without channels) and its own.
create function herald.channel_routes(p_app uuid, p_channels text[])
returns text[]
language plpgsql immutable parallel safe
as $$
declare
    v_key text := p_app::text || ' c ';
    v_keys text[] := array[v_key || '*'];
    v_channel text;
begin
    foreach v_channel in array coalesce(p_channels, '{}') loop
        v_keys := v_keys || (v_key || v_channel);
    end loop;
    return v_keys;
end
$$;

-- A payload as jsonb, or null if it has none: JSON text may hold `\u0000`, which jsonb
-- cannot, and such a payload contains no filter rather than failing its send.
create function herald.jsonb_or_null(p_payload json) returns jsonb
language plpgsql immutable parallel safe
as $$
begin
    return p_payload::jsonb;
exception when untranslatable_character or invalid_parameter_value then
    return null;
end
$$;

-- Why a message would not reach an endpoint (`event_type`, `channel` or `filter`), or null if
-- it would. herald.enqueue asks the same question in the form its index answers (the keys
-- above); replays, recovers and the dry-run ask it here, one endpoint at a time, without
-- building keys (a recover asks it of every message in its window). A test sends every
-- combination it tries both ways and compares.
create function herald.route_miss(p_app uuid, p_event_types text[], p_channels text[],
                                  p_filter jsonb, p_event_type text, p_msg_channels text[],
                                  p_payload json)
returns text
language sql immutable parallel safe
as $$
    select case
        when not (cardinality(p_event_types) = 0
                  or p_event_type = any (p_event_types)
                  or '*' = any (p_event_types)
                  or exists (select 1 from unnest(p_event_types) t
                              where t like '%.*'
                                and starts_with(p_event_type, left(t, -1))))
            then 'event_type'
        when not (cardinality(p_channels) = 0 or p_channels && coalesce(p_msg_channels, '{}'))
            then 'channel'
        when p_filter is not null
             and not coalesce(herald.jsonb_or_null(p_payload) @> p_filter, false)
            then 'filter'
    end
$$;

drop function herald.send_message(text, text, json, text);
drop function herald.enqueue(text, text, json, text, uuid, float8, uuid[]);

-- As 0019, with the message's channels and the routing above.
create function herald.enqueue(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text,
    p_worker uuid,
    p_lease_secs float8,
    p_busy_endpoints uuid[],
    p_channels text[] default null,
    out message herald.message,
    out claimed json,
    out pending_endpoints uuid[]
)
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_floor uuid;
    v_app_id uuid;
    v_id uuid;
    v_claimed_key uuid;
    v_types text[];
    v_channels text[];
begin
    -- Once, as a value: a function in the statement would be called for each row. Read by
    -- a statement here rather than through herald.live_floor(): a SQL function called from
    -- a plpgsql expression is parsed and planned again in every transaction (measured with
    -- `make bench --baseline`: the burst went from about 0.91 of the build before routing to
    -- 1.04 of it).
    select floor_id into v_floor from live_floor;
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

    insert into herald.message (id, app_id, event_type, payload, idempotency_key, channels)
    values (coalesce(v_id, herald.uuid_v7()), v_app_id, p_event_type, p_payload,
            p_idempotency_key, nullif(p_channels, '{}'))
    returning * into message;

    v_types := herald.type_routes(v_app_id, p_event_type);
    v_channels := herald.channel_routes(v_app_id, p_channels);

    -- An endpoint is sent to directly only if nothing of its is due and waiting (no
    -- queue jumping), the offering process is not already at the endpoint's cap
    -- (p_busy_endpoints: the process counts its own requests; counting everyone's here
    -- would cost every send a scan), and it sets no limit of its own: an explicit cap or a
    -- rate limit is a promise to the receiver, kept exactly by the claim alone.
    -- The endpoints reached are those whose routes overlap the message's type and channels
    -- (herald.route_miss says the same, one endpoint at a time), and whose filter, if any,
    -- the payload contains: the payload becomes jsonb once (an init plan), and only if an
    -- endpoint has a filter.
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
           and e.routes && v_types
           and e.routes && v_channels
           and (e.filter is null or e.filter <@ (select herald.jsonb_or_null(p_payload)))
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

-- As 0016, with channels (a backend's call without them reads as before).
create function herald.send_message(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text default null,
    p_channels text[] default null
) returns herald.message
language sql
set search_path = herald, pg_temp
as $$
    select message from herald.enqueue(p_app, p_event_type, p_payload, p_idempotency_key,
                                       null, null, '{}', p_channels)
$$;
