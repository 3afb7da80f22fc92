-- The claim's walk reads one index entry per endpoint, however many of its rows wait for a
-- retry (found by a review, issue 18's session of 2026-12-04).
--
-- The walk found the next endpoint with a due row by one probe of delivery_endpoint_pending
-- (endpoint_id, next_attempt_at): `endpoint_id > previous and next_attempt_at <= now()`.
-- Past an inequality on its first column, a condition on the second cannot bound a B-tree
-- scan, so the probe read, and skipped one by one, every entry of every endpoint in between
-- whose rows were all waiting: a failing endpoint with a million retries in backoff was read
-- whole by every claim that walked past it, and every tenant's deliveries waited for that.
-- The probe now takes the first entry past the previous endpoint, whatever its time: that
-- endpoint's earliest pending row, due or not, which says whether it has a due row. A walk
-- stops after p_endpoints endpoints with due rows, as before, or after 4 × p_endpoints
-- probes, and then says where it stopped (walk_end), even when it took nothing, so the next
-- claim goes on from there: a lap through many endpoints that only wait costs one entry
-- each, spread over several claims.
--
-- The rest of claim_next is 0036's, with `enable_seqscan = off` and `jit = off` (0034); the
-- six-argument claim_next still calls this one.

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
    -- Probes a walk may make: endpoints whose rows all wait count too.
    v_steps bigint := 4 * p_endpoints;
    v_last uuid;
    v_n bigint;
    v_k bigint;
begin
    -- The endpoints with due rows, in id order from p_after: a loose index scan over
    -- delivery_endpoint_pending, one probe per endpoint with pending rows. Each probe takes
    -- the first entry past the last endpoint, which is that endpoint's earliest pending row
    -- (the index is in (endpoint_id, next_attempt_at) order): it is due if that row is. At
    -- most p_endpoints endpoints with due rows, in at most v_steps probes: a walk through
    -- endpoints whose rows all wait for a retry stops there, says where, and the next claim
    -- goes on from it.
    select array_agg(s.endpoint_id order by s.n) filter (where s.due),
           (array_agg(s.endpoint_id order by s.n desc))[1],
           max(s.n), max(s.k)
      into v_walk, v_last, v_n, v_k
      from (
        with recursive step as (
            (select d.endpoint_id, d.next_attempt_at <= now() as due, 1 as n,
                    (d.next_attempt_at <= now())::int as k
               from delivery d
              where d.state = 'pending' and d.id >= v_floor and d.endpoint_id > p_after
              order by d.endpoint_id, d.next_attempt_at
              limit 1)
            union all
            select next.endpoint_id, next.due, prev.n + 1, prev.k + next.due::int
              from step prev
             cross join lateral (
                   select d.endpoint_id, d.next_attempt_at <= now() as due
                     from delivery d
                    where d.state = 'pending' and d.id >= v_floor
                      and d.endpoint_id > prev.endpoint_id
                    order by d.endpoint_id, d.next_attempt_at
                    limit 1) next
             where prev.n < v_steps and prev.k < p_endpoints
        )
        select * from step) s;
    v_walk := coalesce(v_walk, '{}');
    -- Stopped early: more endpoints may have due rows after the last one walked.
    if v_n >= v_steps or v_k >= p_endpoints then
        v_walk_end := v_last;
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
