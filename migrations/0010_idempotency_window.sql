-- Idempotency keys are honoured for a window, then a repeated key creates a new message
-- (issue 14, point 5). Until now the unique index `message_idempotency` made a key answer
-- its first message forever, and a history partitioned on `id` (issue 14, point 2) cannot
-- keep that index: PostgreSQL enforces a unique index across partitions only when it
-- includes the partition key. So the rule moves into herald.enqueue:
--
-- * A send with a key takes a transaction-scoped advisory lock on a hash of (application
--   id, key), so concurrent sends of one key run one after the other; the second, in READ
--   COMMITTED (each statement a new snapshot), sees the first's message once it commits.
--   Lock space: the two-key form pg_advisory_xact_lock(1752329316, hashtext(app id || key)),
--   1752329316 being "hrld" in ASCII. Two-key locks never collide with one-key locks (sqlx's
--   migration lock, or a bigint lock of the application sharing the database); an
--   application's own two-key locks must use another first key. Two keys whose hashes
--   collide only wait for each other.
-- * It then looks for a message of that application with that key whose id is at least
--   herald.uuid_v7_floor(now() - window): ids are UUIDv7, so this reads the window's end of
--   the index built in 0009, and later lets partition pruning skip older partitions.
--   Found: that message is the answer and nothing is queued. Not found: a new message.
-- * The window comes from the setting `herald.idempotency_window` (an interval: '24 hours',
--   '90 seconds'), which every Herald connection sets from HERALD_IDEMPOTENCY_WINDOW; a
--   connection that has not set it (a backend calling herald.send_message) gets 24 hours.
--   Read through current_setting, so the function's signature, and herald.send_message's,
--   stay as they are.
-- * A send without a key takes none of this: its cost is unchanged.
--
-- Keys stored before this migration are honoured the same way (their ids carry their time).
-- Otherwise herald.enqueue is 0004's, unchanged; processes of the previous release call it
-- with the same arguments and get the same columns, so a rolling upgrade keeps sending.
--
-- The unique index goes in the same transaction as the function is replaced: the old
-- function's `on conflict (app_id, idempotency_key)` needs it. Dropping it takes an ACCESS
-- EXCLUSIVE lock on herald.message for an instant (an index drop rewrites nothing), but
-- waiting for that lock behind an open transaction would hold every send up behind the
-- wait; so each try waits at most 100 ms, and the migration gives up after about a minute of
-- tries (start Herald again once the long transaction is gone).

do $$
declare
    v_lock_timeout text := current_setting('lock_timeout');
    v_tries integer := 0;
begin
    if not exists (select 1 from pg_index
                    where indexrelid = 'herald.message_idempotency_window'::regclass
                      and indisvalid) then
        raise exception 'herald: index herald.message_idempotency_window (migration 0009) is '
                        'not valid: its build was interrupted. Drop it, delete version 9 from '
                        'herald._sqlx_migrations, and run the migrations again';
    end if;
    perform set_config('lock_timeout', '100ms', true);
    loop
        begin
            drop index herald.message_idempotency;
            exit;
        exception when lock_not_available then
            v_tries := v_tries + 1;
            if v_tries >= 300 then
                raise exception 'herald: herald.message stayed locked for a minute (a long '
                                'transaction holding it? see pg_stat_activity): its unique index '
                                'could not be dropped; run the migrations again';
            end if;
            perform pg_sleep(0.1);
        end;
    end loop;
    perform set_config('lock_timeout', v_lock_timeout, true);
end
$$;

-- The outbox entry point. Stores a message and one delivery per matching enabled endpoint
-- in the caller's transaction, and announces queued deliveries with NOTIFY. p_app is an
-- application id (app_...) or uid; an idempotency key repeated within the window (the
-- setting herald.idempotency_window, default 24 hours) returns the original message and
-- queues nothing.
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
    v_window interval;
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
        -- One send of a key at a time (held to the end of the caller's transaction), so
        -- the lookup below sees whatever message an earlier send of the key committed.
        perform pg_advisory_xact_lock(1752329316, hashtext(v_app_id::text || p_idempotency_key));
        v_window := coalesce(nullif(current_setting('herald.idempotency_window', true), ''),
                             '24 hours')::interval;
        if v_window <= interval '0' then
            raise exception 'herald: herald.idempotency_window must be positive, not %', v_window
                using errcode = 'invalid_parameter_value';
        end if;
        select * into message from herald.message m
         where m.app_id = v_app_id and m.idempotency_key = p_idempotency_key
           and m.id >= herald.uuid_v7_floor(now() - v_window)
         order by m.id desc
         limit 1;
        if found then
            claimed := '[]';
            pending_endpoints := '{}';
            return;
        end if;
    end if;

    insert into herald.message (app_id, event_type, payload, idempotency_key)
    values (v_app_id, p_event_type, p_payload, p_idempotency_key)
    returning * into message;

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
