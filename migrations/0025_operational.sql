-- Operational webhooks (issue 17, point 3): what happens to customers' endpoints, sent to the
-- operator's own application (HERALD_OPERATIONAL_APP) as ordinary signed webhooks.
--
-- Each fact is written by the state change's own transaction, into `operational_event`: a
-- trigger on the row that changes (a delivery dying or recovering, an endpoint disabled,
-- failing, or changed by a customer) inserts it, so a fact committed is a fact kept, and a
-- state change rolled back leaves none. Herald's dispatcher (src/operational.rs) turns the
-- facts into messages of the operational application through herald.enqueue, coalescing
-- repeats, and deletes them in that same transaction. An insert is all a hot path pays, and
-- only when a fact happens: the triggers' WHEN conditions are false unless
-- `herald.operational_app` is set on the connection (Herald sets it on its own pool from
-- HERALD_OPERATIONAL_APP), so without operational webhooks nothing runs at all.
--
-- No loops: a fact about the operational application's own endpoints is never written.

-- Fails rather than queues behind a long transaction (0023 says why): adding triggers to
-- the delivery table locks its every partition against writes while it waits.
set local lock_timeout = '10s';

create table herald.operational_event (
    id bigint generated always as identity primary key,
    kind text not null,
    -- The operational application it goes to, as it was when the fact was recorded.
    target_id uuid not null,
    app_id uuid not null,
    endpoint_id uuid not null,
    data jsonb not null,
    created_at timestamptz not null default now()
);
create index operational_event_endpoint on herald.operational_event (endpoint_id, kind, id);

-- When the last message of each coalesced kind went out for an endpoint.
create table herald.operational_notice (
    endpoint_id uuid not null,
    kind text not null,
    sent_at timestamptz not null,
    primary key (endpoint_id, kind)
);

-- Writes one fact, unless operational webhooks are off on this connection, the operational
-- application (by uid, or by id) does not exist, or the fact is about that application
-- itself. A fact goes to the application it was recorded for, whatever the dispatching
-- process is configured with.
create function herald.operational_note(p_kind text, p_app uuid, p_endpoint uuid,
                                        p_data jsonb)
returns void
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_name text := nullif(current_setting('herald.operational_app', true), '');
    v_operational uuid;
begin
    if v_name is null then
        return;
    end if;
    if v_name ~ '^app_[0-9a-f]{32}$' then
        select id into v_operational from application
         where id = substring(v_name from 5)::uuid and removed_at is null;
    else
        select id into v_operational from application
         where uid = v_name and removed_at is null;
    end if;
    if v_operational is null or v_operational = p_app then
        return;
    end if;
    insert into operational_event (kind, target_id, app_id, endpoint_id, data)
    values (p_kind, v_operational, p_app, p_endpoint, p_data);
    perform pg_notify('herald_operational', '');
end
$$;

create function herald.ref(p_prefix text, p_id uuid) returns text
language sql immutable parallel safe
as $$ select p_prefix || '_' || replace(p_id::text, '-', '') $$;

-- A delivery died (retries exhausted), or succeeded after a failed attempt (`last_error` is set by a failure and cleared by a replay, so a replay that
-- succeeds at once recovers nothing).
create function herald.operational_delivery() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_app uuid;
    v_url text;
    v_type text;
    v_disabled boolean;
    v_removed boolean;
begin
    select e.app_id, e.url, e.disabled, e.removed_at is not null
      into v_app, v_url, v_disabled, v_removed
      from endpoint e where e.id = new.endpoint_id;
    -- A removed endpoint's deliveries are history being deleted; a disabled endpoint's
    -- backlog dying is what `endpoint.disabled` said, not one fact per delivery.
    if v_removed or (new.state = 'dead' and v_disabled) then
        return null;
    end if;
    select m.event_type into v_type from message m where m.id = new.message_id;
    perform herald.operational_note(
        case when new.state = 'dead' then 'delivery.dead' else 'delivery.recovered' end,
        v_app, new.endpoint_id,
        jsonb_build_object(
            'url', v_url,
            'delivery_id', herald.ref('dlv', new.id),
            'message_id', herald.ref('msg', new.message_id),
            'event_type', v_type,
            'attempts', new.attempt_count - new.retry_base,
            'last_error', case when new.state = 'dead' then new.last_error
                               else old.last_error end,
            'at', now()));
    return null;
end
$$;

create trigger operational_delivery_dead
    after update of state on herald.delivery
    for each row
    when (new.state = 'dead' and old.state <> 'dead'
          and current_setting('herald.operational_app', true) <> '')
    execute function herald.operational_delivery();

create trigger operational_delivery_recovered
    after update of state on herald.delivery
    for each row
    when (new.state = 'succeeded' and old.state <> 'succeeded' and old.last_error is not null
          and current_setting('herald.operational_app', true) <> '')
    execute function herald.operational_delivery();

-- An endpoint disabled (not by its removal), failing when it was not (failing_since set),
-- or created, changed or removed by a customer: a portal session or an API token, which
-- Herald names in the transaction-local `herald.actor` before it makes the change.
create function herald.operational_endpoint() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_actor text := nullif(current_setting('herald.actor', true), '');
    v_changed text[];
begin
    if tg_op = 'INSERT' then
        if v_actor is not null then
            perform herald.operational_note('endpoint.created', new.app_id, new.id,
                jsonb_build_object('url', new.url, 'by', v_actor, 'at', now(),
                                   'endpoint', herald.operational_endpoint_shown(new)));
        end if;
        return null;
    end if;
    if old.removed_at is not null then
        return null;
    end if;
    if new.removed_at is not null then
        if v_actor is not null then
            perform herald.operational_note('endpoint.deleted', new.app_id, new.id,
                jsonb_build_object('url', new.url, 'by', v_actor, 'at', now(),
                                   'endpoint', herald.operational_endpoint_shown(old)));
        end if;
        return null;
    end if;
    if new.disabled and not old.disabled then
        perform herald.operational_note('endpoint.disabled', new.app_id, new.id,
            jsonb_build_object('url', new.url, 'reason', new.disabled_reason,
                               'by', v_actor, 'at', now()));
    end if;
    if new.failing_since is not null and old.failing_since is null then
        perform herald.operational_note('endpoint.failing', new.app_id, new.id,
            jsonb_build_object('url', new.url, 'why', 'first_failure',
                               'failing_since', new.failing_since, 'at', now()));
    end if;
    if v_actor is not null then
        v_changed := array_remove(array[
            case when new.url is distinct from old.url then 'url' end,
            case when new.description is distinct from old.description then 'description' end,
            case when new.event_types is distinct from old.event_types then 'event_types' end,
            case when new.channels is distinct from old.channels then 'channels' end,
            case when new.filter is distinct from old.filter then 'filter' end,
            case when new.disabled is distinct from old.disabled then 'disabled' end,
            case when new.max_in_flight is distinct from old.max_in_flight
                 then 'max_in_flight' end,
            case when new.rate_limit is distinct from old.rate_limit then 'rate_limit' end,
            case when new.headers is distinct from old.headers then 'headers' end], null);
        if cardinality(v_changed) > 0 then
            perform herald.operational_note('endpoint.updated', new.app_id, new.id,
                jsonb_build_object('url', new.url, 'by', v_actor, 'at', now(),
                                   'changed', to_jsonb(v_changed),
                                   'endpoint', herald.operational_endpoint_shown(new)));
        end if;
    end if;
    return null;
end
$$;

-- What an operational event shows of an endpoint: its settings, not its headers' values or
-- its secrets (the URL is shown without credentials by the dispatcher).
create function herald.operational_endpoint_shown(p herald.endpoint) returns jsonb
language sql stable
as $$
    select jsonb_build_object('description', p.description, 'event_types', p.event_types,
                              'channels', p.channels, 'filter', p.filter,
                              'disabled', p.disabled, 'rate_limit', p.rate_limit,
                              'max_in_flight', p.max_in_flight)
$$;

create trigger operational_endpoint_created
    after insert on herald.endpoint
    for each row
    when (current_setting('herald.operational_app', true) <> ''
          and current_setting('herald.actor', true) <> '')
    execute function herald.operational_endpoint();

create trigger operational_endpoint_changed
    after update on herald.endpoint
    for each row
    when (current_setting('herald.operational_app', true) <> ''
          and ((new.disabled and not old.disabled)
               or (new.failing_since is not null and old.failing_since is null)
               or current_setting('herald.actor', true) <> ''))
    execute function herald.operational_endpoint();

-- As 0017, and, with operational webhooks on, the share of failures: for each endpoint with
-- a failed attempt in the statement, if at least `herald.operational_failing_share` of its
-- attempts in the last five minutes (ten at least) failed, an `endpoint.failing` fact, at
-- most one a minute per endpoint (the dispatcher coalesces further).
create or replace function herald.rollup_attempt() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_share float8;
begin
    insert into attempt_minute as r (endpoint_id, minute, app_id, succeeded, total)
    select n.endpoint_id, date_trunc('minute', n.created_at), n.app_id,
           count(*) filter (where n.outcome = 'succeeded'), count(*)
      from inserted n
     group by 1, 2, 3
     order by 1, 2
    on conflict (endpoint_id, minute) do update
       set succeeded = r.succeeded + excluded.succeeded, total = r.total + excluded.total;
    if current_setting('herald.operational_app', true) <> '' then
        v_share := nullif(current_setting('herald.operational_failing_share', true), '')::float8;
        if v_share is not null then
            perform herald.operational_note('endpoint.failing', f.app_id, f.endpoint_id,
                       jsonb_build_object('url', e.url, 'why', 'failure_share',
                                          'failing_since', e.failing_since,
                                          'failed', s.total - s.succeeded,
                                          'attempts', s.total, 'at', now()))
              from (select distinct n.endpoint_id, n.app_id from inserted n
                     where n.outcome <> 'succeeded') f
              join endpoint e on e.id = f.endpoint_id and e.removed_at is null
                                 and not e.disabled
             cross join lateral (
                   select coalesce(sum(r.total), 0) as total,
                          coalesce(sum(r.succeeded), 0) as succeeded
                     from attempt_minute r
                    where r.endpoint_id = f.endpoint_id
                      and r.minute >= date_trunc('minute', now()) - interval '4 minutes') s
             where s.total >= 10
               and (s.total - s.succeeded)::float8 / s.total >= v_share
               and not exists (select 1 from operational_event o
                                where o.endpoint_id = f.endpoint_id
                                  and o.kind = 'endpoint.failing'
                                  and o.created_at > now() - interval '1 minute');
        end if;
    end if;
    return null;
end
$$;
