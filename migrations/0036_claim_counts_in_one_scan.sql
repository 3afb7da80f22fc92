-- The claim counts the requests in flight at an endpoint in one scan (issue 18, fan-out).
--
-- The room at an endpoint is its cap less its requests in flight, not counting the
-- caller's own whose request is over and whose completion is not written yet (`p_finished`,
-- 0034). claim_next counted the rows in flight, then found each of p_finished again by its
-- primary key to count out those still in flight, locked by the caller: in a fan-out (10
-- endpoints) a claim of 114 rows was passed 370 such ids, each probed in the delivery
-- partition (index and heap), for rows the count had just read. They are now counted out by
-- the same scan: a row in flight counts unless the caller holds it and it is among
-- p_finished (`not in` a subquery, hashed once per claim: `= any` of the array would
-- compare each row with every id). The same rows count, in the same snapshot.
--
-- The function keeps `enable_seqscan = off` and `jit = off` (0034); the six-argument
-- claim_next still calls this one.

create or replace function herald.claim_next(
    p_worker uuid,
    p_lease_secs float8,
    p_limit bigint,
    p_default_cap integer,
    p_endpoints bigint,
    p_after uuid,
    p_finished uuid[]
)
returns table (
    id uuid, attempt_count integer, trigger text, retry_base integer, message_id uuid,
    app_id uuid, event_type text, payload text, message_created_at timestamptz,
    endpoint_id uuid, url text, headers jsonb, disabled boolean, disabled_reason text,
    secrets text[], room bigint, max_in_flight integer, rate_limit integer, walk_end uuid
)
language plpgsql
set search_path = herald, pg_temp
set enable_seqscan = off
set jit = off
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
            -- In flight in the table but not at the endpoint: the caller's own rows among
            -- p_finished, counted out in this statement's snapshot, so a completion
            -- committed meanwhile counts once.
            select de.endpoint_id, de.n, l.free, l.tokens
              from unnest(v_endpoints) with ordinality as de(endpoint_id, n)
             cross join lateral (
                   select coalesce(e.max_in_flight, p_default_cap)
                            - (select count(*) from delivery f
                                where f.state = 'in_flight' and f.endpoint_id = e.id
                                  and f.id >= v_floor
                                  and (f.locked_by is distinct from p_worker
                                       or f.id not in (select u from unnest(p_finished) u
                                                    where u is not null))) as free,
                          least(e.rate_limit::float8,
                                e.rate_tokens
                                + greatest(extract(epoch from now() - e.rate_at)::float8, 0)
                                  * e.rate_limit) as tokens
                     from endpoint e
                    where e.id = de.endpoint_id
                   offset 0) l
        ), walk as (
            -- Endpoint by endpoint in walk order, each one's due rows, oldest first, as
            -- many as its room allows and the claim still needs, read but not locked:
            -- the walk stops once it has p_limit rows, and reads no row beyond them.
            with recursive step(n, taken, ids) as (
                select 0::bigint, 0::bigint, '{}'::uuid[]
                union all
                select s.n + 1, s.taken + cardinality(x.ids), x.ids
                  from step s
                  join room r on r.n = s.n + 1
                 cross join lateral (
                       select array(
                           select d.id
                             from delivery d
                            where d.endpoint_id = r.endpoint_id
                              and d.state = 'pending' and d.next_attempt_at <= now()
                              and d.id >= v_floor
                            order by d.next_attempt_at
                            limit greatest(least(r.free,
                                                 coalesce(floor(r.tokens)::bigint, r.free),
                                                 p_limit - s.taken), 0)) as ids) x
                 where s.taken < p_limit
            )
            select unnest(step.ids) as id from step
        ), picked as (
            -- Locked only now, and only the rows the claim takes: locked endpoint by
            -- endpoint, before the limit, a claim at ten endpoints locked up to ten times
            -- the rows it took. A row another transaction changed since is checked again
            -- (still pending, still due), and one it holds is skipped. Found by id: the
            -- state is tested as `(…) is true` so that the planner cannot use it to reach
            -- for the pending index, whose every due row it would then read to find these.
            -- Between the lowest and highest of them: only the partitions they are in
            -- are read (`= any` of an array prunes none).
            select d.id, d.endpoint_id
              from delivery d
             where d.id = any (array(select w.id from walk w))
               and d.id >= (select w.id from walk w order by w.id limit 1)
               and d.id <= (select w.id from walk w order by w.id desc limit 1)
               and (d.state = 'pending') is true and d.next_attempt_at <= now()
               for update of d skip locked
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
               and d.id >= (select p.id from picked p order by p.id limit 1)
               and d.id <= (select p.id from picked p order by p.id desc limit 1)
            returning d.id, d.attempt_count, d.trigger, d.retry_base, d.message_id,
                      d.endpoint_id
        ), sent_to as materialized (
            -- What a claimed row is sent with, read once per endpoint that got rows, not
            -- once per row (materialized: inlined, its secrets would be read per row).
            select e.id, r.free, e.url, e.headers, e.disabled, e.disabled_reason,
                   coalesce(e.max_in_flight, p_default_cap) as max_in_flight, e.rate_limit,
                   array(select s.secret from endpoint_secret s
                          where s.endpoint_id = e.id
                            and (s.expires_at is null or s.expires_at > now())
                          order by s.created_at desc) as secrets
              from endpoint e
              join room r on r.endpoint_id = e.id
             where e.id = any (array(select distinct c.endpoint_id from claimed c))
        )
        -- The message by a lateral lookup (`offset 0` keeps it from being flattened into a
        -- join), for the same reason: one index probe per claimed row.
        select c.id, c.attempt_count, c.trigger::text, c.retry_base, c.message_id,
               m.app_id, m.event_type, m.payload, m.created_at, c.endpoint_id, t.url,
               t.headers, t.disabled, t.disabled_reason, t.secrets, t.free,
               t.max_in_flight, t.rate_limit, v_walk_end
          from claimed c
          join sent_to t on t.id = c.endpoint_id
         cross join lateral (
               select m.app_id, m.event_type, m.payload::text as payload, m.created_at
                 from message m where m.id = c.message_id offset 0) m;
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
