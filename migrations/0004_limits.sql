-- Per-endpoint rate limits: a token bucket kept on the endpoint row, so every process
-- sharing the database draws from the same one. `rate_limit` is requests per second and the
-- bucket holds one second's worth; the claim that sends a request spends its token (see
-- herald.claim below). `rate_at` starts in 1970: a new bucket is full.

alter table herald.endpoint
    add column rate_limit integer check (rate_limit between 1 and 10000),
    add column rate_tokens float8 not null default 0,
    add column rate_at timestamptz not null default 'epoch';

-- Exact limits, across processes. The claim locks each endpoint row it claims for (FOR NO
-- KEY UPDATE SKIP LOCKED), then counts the requests in flight there in a statement of its
-- own: in READ COMMITTED each statement takes a new snapshot, so the count sees everything
-- the endpoint's previous lock holder committed. (Counted in the statement that takes the
-- lock, the count used the snapshot from before the lock, and two processes could both see
-- room for the same request.) Direct dispatch counts only the sending process's own
-- requests, so endpoints with an explicit cap or a rate limit are never sent to directly:
-- the claim alone keeps those exact. Otherwise as in 0001.

-- The outbox entry point. Stores a message and one delivery per matching enabled endpoint
-- in the caller's transaction, and announces queued deliveries with NOTIFY. p_app is an
-- application id (app_...) or uid; a repeated idempotency key returns the original message
-- and queues nothing.
--
-- Direct dispatch: when the API process that accepts a message has workers free it passes
-- p_worker, and the deliveries of endpoints with no backlog and no limits of their own are
-- inserted already claimed by that process (in flight, under a lease). The process sends
-- them right after the commit: no NOTIFY, no claim round trip, no pending -> in_flight
-- update. If it dies first, the lease expires and the sweep hands them to any worker.
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
        claimed := '[]';
        pending_endpoints := '{}';
        return;
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


-- Claims up to p_limit due deliveries for worker p_worker, endpoint by endpoint: it walks
-- the endpoints that have due rows (in id order after p_after, a loose index scan, at most
-- p_endpoints of them), gives each no more rows than its cap leaves room for (counting what
-- every worker has in flight there) and its rate limit has tokens for, and takes its oldest
-- due rows first. Rows and endpoints other workers hold are skipped, never waited for.
create function herald.claim(
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
    secrets text[], room bigint, max_in_flight integer, rate_limit integer
)
language plpgsql
set search_path = herald, pg_temp
as $$
#variable_conflict use_column
declare
    v_endpoints uuid[];
begin
    -- The endpoints with due rows, locked.
    v_endpoints := array(
        with recursive due_endpoint as (
            (select d.endpoint_id, 1 as n
               from delivery d
              where d.state = 'pending' and d.next_attempt_at <= now()
                and d.endpoint_id > p_after
              order by d.endpoint_id
              limit 1)
            union all
            select next.endpoint_id, prev.n + 1
              from due_endpoint prev
             cross join lateral (
                   select d.endpoint_id
                     from delivery d
                    where d.state = 'pending' and d.next_attempt_at <= now()
                      and d.endpoint_id > prev.endpoint_id
                    order by d.endpoint_id
                    limit 1) next
             where prev.n < p_endpoints
        )
        select e.id
          from due_endpoint de
          join endpoint e on e.id = de.endpoint_id
         order by de.n
           for no key update of e skip locked);
    if cardinality(v_endpoints) = 0 then
        return;
    end if;

    -- A statement of its own, so its snapshot sees what the endpoints' previous lock holders
    -- committed: the room is exact.
    return query
    with room as (
        -- Room under the cap and, for a rate-limited endpoint, the tokens its bucket holds
        -- now (refilled at rate_limit per second, up to one second's worth).
        select de.endpoint_id, de.n, l.free, l.tokens
          from unnest(v_endpoints) with ordinality as de(endpoint_id, n)
         cross join lateral (
               select coalesce(e.max_in_flight, p_default_cap)
                        - (select count(*) from delivery f
                            where f.state = 'in_flight' and f.endpoint_id = e.id) as free,
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
                order by d.next_attempt_at
                limit greatest(least(r.free, coalesce(floor(r.tokens)::bigint, r.free)), 0)
                  for update of d skip locked) rows
         order by r.n
         limit p_limit
    ), spent as (
        -- Each claimed request spends a token. A claim must never move the clock back, or
        -- the time in between would be refilled twice.
        update endpoint e
           set rate_tokens = r.tokens - (select count(*) from picked p
                                         where p.endpoint_id = e.id),
               rate_at = greatest(e.rate_at, now())
          from room r
         where e.id = r.endpoint_id and r.tokens is not null
    ), claimed as (
        -- `= any(array(...))`, not a join: under a generic plan the planner cannot tell how
        -- few rows were picked, and a join may become a full table scan.
        update delivery d
           set state = 'in_flight',
               locked_by = p_worker,
               lease_expires_at = now() + make_interval(secs => p_lease_secs),
               attempt_count = d.attempt_count + 1,
               updated_at = now()
         where d.id = any (array(select p.id from picked p))
        returning d.id, d.attempt_count, d.trigger, d.retry_base, d.message_id, d.endpoint_id
    )
    -- Lateral lookups (`offset 0` keeps them from being flattened into joins), for the same
    -- reason: one index probe per claimed row.
    select c.id, c.attempt_count, c.trigger::text, c.retry_base, c.message_id,
           m.app_id, m.event_type, m.payload, m.created_at, c.endpoint_id, e.url, e.headers,
           e.disabled, e.disabled_reason, e.secrets,
           (select p.free from picked p where p.id = c.id), e.max_in_flight, e.rate_limit
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
end
$$;
