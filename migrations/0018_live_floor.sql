-- The live floor: where, in the history's time order, deliveries that are still pending
-- or in flight can be found. The claim, direct dispatch's "anything waiting?" and the lease
-- sweep look for live deliveries by endpoint and state, which no partition key bounds: with
-- a month of daily partitions each such probe visited every partition's index (the burst
-- on 34 partitions of history spent 0.37 ms more per send, 79% of the empty database's
-- deliveries per second). Live deliveries are nearly all in the newest partitions, so these
-- statements now also say `id >= ` the floor, and PostgreSQL skips every partition
-- below it (the default partition, where kept ones wait, is always read).
--
-- The floor is the start of the oldest message partition holding a live delivery, never
-- above the partition new messages go to now. It is kept right both ways:
-- * lowered at once by whatever makes an older delivery live again (a replay, a retry, a
--   recover: herald.live_from, in the same transaction, before it changes the delivery);
-- * recomputed on each turn of the history manager (herald.refresh_live_floor), which also
--   lowers it should anything have made a row live without saying so: such a delivery would
--   wait at most one turn, never be lost.
-- The two cannot race: live_from holds a KEY SHARE lock on the floor's row until its
-- transaction ends, refresh takes FOR UPDATE first, so it waits for such transactions and
-- then sees what they committed; live_froms do not wait for one another.
create table herald.live_floor (
    one      boolean primary key default true check (one),
    floor_id uuid not null
);
insert into herald.live_floor (floor_id) values ('00000000-0000-0000-0000-000000000000');

create function herald.live_floor() returns uuid
language sql stable parallel safe
as $$ select floor_id from herald.live_floor $$;

-- Says that deliveries from p_id's moment on may be live (called before making them so).
create function herald.live_from(p_id uuid) returns void
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    -- The smallest id of p_id's millisecond: a delivery's id carries its message's
    -- millisecond, not its message's whole id.
    v_floor uuid := encode(overlay('\x00000000000070008000000000000000'::bytea
                                   placing substring(uuid_send(p_id) from 1 for 6)
                                   from 1 for 6), 'hex')::uuid;
begin
    perform 1 from live_floor for key share;
    update live_floor set floor_id = v_floor where floor_id > v_floor;
end
$$;

create function herald.refresh_live_floor() returns uuid
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_part record;
    v_live boolean;
    v_floor uuid;
    v_now uuid;
begin
    perform 1 from live_floor for update;
    for v_part in select suffix, starts_at from history_partition
                   where kind = 'message' order by starts_at loop
        execute format('select exists (select 1 from %1$I where state = ''pending'')
                            or exists (select 1 from %1$I where state = ''in_flight'')',
                       'delivery_' || v_part.suffix) into v_live;
        if v_live then
            v_floor := case when v_part.starts_at = '-infinity'
                            then '00000000-0000-0000-0000-000000000000'::uuid
                            else uuid_v7_floor(v_part.starts_at) end;
            exit;
        end if;
    end loop;
    select case when starts_at = '-infinity' then '00000000-0000-0000-0000-000000000000'::uuid
                else uuid_v7_floor(starts_at) end
      into v_now
      from history_partition
     where kind = 'message' and starts_at <= now()
     order by starts_at desc limit 1;
    v_floor := least(v_floor, coalesce(v_now, '00000000-0000-0000-0000-000000000000'::uuid));
    update live_floor set floor_id = v_floor;
    return v_floor;
end
$$;

-- As 0016, with the floor in direct dispatch's look for due deliveries.
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
        select id into v_app_id from application where id = substring(p_app from 5)::uuid;
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


-- As 0005, with the floor in the walk, the in-flight count and the pick.
create or replace function herald.claim_next(
    p_worker uuid,
    p_lease_secs float8,
    p_limit bigint,
    p_default_cap integer,
    p_endpoints bigint,
    p_after uuid
)
returns table (
    id uuid, attempt_count integer, trigger text, retry_base integer, message_id uuid,
    app_id uuid, event_type text, payload text, message_created_at timestamptz,
    endpoint_id uuid, url text, headers jsonb, disabled boolean, disabled_reason text,
    secrets text[], room bigint, max_in_flight integer, rate_limit integer, walk_end uuid
)
language plpgsql
set search_path = herald, pg_temp
as $$
#variable_conflict use_column
declare
    -- Once, as a value: a function in the statement would be called for each row.
    v_floor uuid := herald.live_floor();
    v_walk uuid[];
    v_walk_end uuid;
    v_endpoints uuid[];
begin
    -- The endpoints with due rows, in id order: a loose index scan over
    -- delivery_endpoint_pending, one probe per endpoint.
    v_walk := array(
        with recursive due_endpoint as (
            (select d.endpoint_id, 1 as n
               from delivery d
              where d.state = 'pending' and d.next_attempt_at <= now() and d.id >= v_floor
                and d.endpoint_id > p_after
              order by d.endpoint_id
              limit 1)
            union all
            select next.endpoint_id, prev.n + 1
              from due_endpoint prev
             cross join lateral (
                   select d.endpoint_id
                     from delivery d
                    where d.state = 'pending' and d.next_attempt_at <= now() and d.id >= v_floor
                      and d.endpoint_id > prev.endpoint_id
                    order by d.endpoint_id
                    limit 1) next
             where prev.n < p_endpoints
        )
        select de.endpoint_id from due_endpoint de order by de.n);
    if cardinality(v_walk) = 0 then
        return;
    end if;
    -- Stopped early: more endpoints may have due rows after the last one walked.
    if cardinality(v_walk) >= p_endpoints then
        v_walk_end := v_walk[cardinality(v_walk)];
    end if;

    -- Those endpoints, locked; the ones another transaction holds are skipped.
    v_endpoints := array(
        select e.id from endpoint e
         where e.id = any (v_walk)
         order by e.id
           for no key update of e skip locked);

    if cardinality(v_endpoints) > 0 then
        -- A statement of its own, so its snapshot sees what the endpoints' previous lock
        -- holders committed: the room is exact.
        return query
        with room as (
            -- Room under the cap and, for a rate-limited endpoint, the tokens its bucket
            -- holds now (refilled at rate_limit per second, up to one second's worth).
            select de.endpoint_id, de.n, l.free, l.tokens
              from unnest(v_endpoints) with ordinality as de(endpoint_id, n)
             cross join lateral (
                   select coalesce(e.max_in_flight, p_default_cap)
                            - (select count(*) from delivery f
                                where f.state = 'in_flight' and f.endpoint_id = e.id
                                  and f.id >= v_floor) as free,
                          least(e.rate_limit::float8,
                                e.rate_tokens
                                + greatest(extract(epoch from now() - e.rate_at)::float8, 0)
                                  * e.rate_limit) as tokens
                     from endpoint e
                    where e.id = de.endpoint_id
                   offset 0) l
        ), picked as (
            select rows.id, r.free, r.endpoint_id
              from room r
             cross join lateral (
                   select d.id
                     from delivery d
                    where d.endpoint_id = r.endpoint_id
                      and d.state = 'pending' and d.next_attempt_at <= now()
                      and d.id >= v_floor
                    order by d.next_attempt_at
                    limit greatest(least(r.free, coalesce(floor(r.tokens)::bigint, r.free)), 0)
                      for update of d skip locked) rows
             order by r.n
             limit p_limit
        ), spent as (
            -- Each claimed request spends a token. A claim must never move the clock back,
            -- or the time in between would be refilled twice.
            update endpoint e
               set rate_tokens = r.tokens - (select count(*) from picked p
                                             where p.endpoint_id = e.id),
                   rate_at = greatest(e.rate_at, now())
              from room r
             where e.id = r.endpoint_id and r.tokens is not null
               and exists (select 1 from picked p where p.endpoint_id = e.id)
        ), claimed as (
            -- `= any(array(...))`, not a join: under a generic plan the planner cannot tell
            -- how few rows were picked, and a join may become a full table scan.
            update delivery d
               set state = 'in_flight',
                   locked_by = p_worker,
                   lease_expires_at = now() + make_interval(secs => p_lease_secs),
                   attempt_count = d.attempt_count + 1,
                   updated_at = now()
             where d.id = any (array(select p.id from picked p))
            returning d.id, d.attempt_count, d.trigger, d.retry_base, d.message_id,
                      d.endpoint_id
        )
        -- Lateral lookups (`offset 0` keeps them from being flattened into joins), for the
        -- same reason: one index probe per claimed row.
        select c.id, c.attempt_count, c.trigger::text, c.retry_base, c.message_id,
               m.app_id, m.event_type, m.payload, m.created_at, c.endpoint_id, e.url,
               e.headers, e.disabled, e.disabled_reason, e.secrets,
               (select p.free from picked p where p.id = c.id), e.max_in_flight,
               e.rate_limit, v_walk_end
          from claimed c
         cross join lateral (
               select m.app_id, m.event_type, m.payload::text as payload, m.created_at
                 from message m where m.id = c.message_id offset 0) m
         cross join lateral (
               select e.url, e.headers, e.disabled, e.disabled_reason,
                      coalesce(e.max_in_flight, p_default_cap) as max_in_flight, e.rate_limit,
                      array(select s.secret from endpoint_secret s
                             where s.endpoint_id = e.id
                               and (s.expires_at is null or s.expires_at > now())
                             order by s.created_at desc) as secrets
                 from endpoint e where e.id = c.endpoint_id offset 0) e;
        if found then
            return;
        end if;
    end if;

    -- Nothing taken, but the walk stopped early: say where, so the next claim goes on.
    if v_walk_end is not null then
        return query
        select null::uuid, null::integer, null::text, null::integer, null::uuid, null::uuid,
               null::text, null::text, null::timestamptz, null::uuid, null::text,
               null::jsonb, null::boolean, null::text, null::text[], null::bigint,
               null::integer, null::integer, v_walk_end;
    end if;
end
$$;
