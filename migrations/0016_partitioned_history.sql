-- Partitioned history, step 3 of 3 (after 0015 built the key lookup): message, delivery and attempt become range-partitioned
-- on id, and the tables as they were become their first partitions, "legacy" (bounded by
-- 0013, the bound validated by 0014, so attaching them reads no row). Empty (a new
-- install), they are dropped instead.
--
-- The layout (src/db/history.rs manages it while Herald runs):
-- * message_<suffix> and delivery_<suffix> share their bounds. A delivery's id carries its
--   message's time (herald.uuid_v7_at), so a message and all its deliveries always sit in
--   partitions of the same suffix, and the delivery partition's foreign key points at its
--   message partition alone. Retention drops the pair whole.
-- * attempt_<suffix> holds attempts by the time they were made (an attempt's own id), so
--   lists and charts of recent attempts read recent partitions. Attempts no longer
--   reference their delivery by foreign key (one that crossed partitions would make every
--   drop check the other partitions row by row); an attempt outlives its message by at
--   most the retry schedule's span, and lists join it to its message.
-- * Each table has a default partition: rows whose range has no partition yet wait there
--   (a partition is created ahead of time, so only if Herald's manager fell behind), and
--   move into their partition when it is created; and a message whose partition is
--   dropped while one of its deliveries is still pending or in flight moves there with
--   its deliveries, to be removed once they are done.
--
-- Indexes are declared on the parents, with the names they always had (the old tables'
-- own, identical ones, renamed *_legacy, are attached to them rather than built again).
-- One is per partition instead, because a unique index on a partitioned table must
-- contain the partition key: one delivery per (message, endpoint), which within a
-- partition pair is unique everywhere. The idempotency key's lookup is no longer unique
-- (0015): herald.idempotency_key below keeps one key one message in its window.
--
-- The tables are locked for the catalog changes (milliseconds) and for filling
-- herald.idempotency_key from the keyed messages of the idempotency window (a read of
-- those messages: seconds for millions), each try for the locks waiting at most 1.2 s, as
-- 0008 explains.
do $$
declare
    tries int := 0;
begin
    loop
        begin
            set local lock_timeout = '1200ms';
            lock table herald.message, herald.delivery, herald.attempt in access exclusive mode;
            lock table herald.application, herald.endpoint in share row exclusive mode;
            return;
        exception when lock_not_available then
            tries := tries + 1;
            if tries >= 60 then
                raise exception 'herald: could not lock the history tables to partition them '
                                '(a long transaction holds one); end it and start Herald again';
            end if;
            perform pg_sleep(1);
        end;
    end loop;
end
$$;
set local lock_timeout = 0;

-- What depends on the tables' row types or sits on the old tables goes, and is made again
-- below on the partitioned ones.
drop trigger feed_message_created on herald.message;
drop trigger feed_attempt on herald.attempt;
drop trigger feed_delivery_dead on herald.delivery;
drop function herald.send_message(text, text, json, text);
drop function herald.enqueue(text, text, json, text, uuid, float8, uuid[]);
alter table herald.attempt drop constraint attempt_delivery_id_fkey;

alter table herald.message rename to message_legacy;
alter index herald.message_pkey rename to message_legacy_pkey;
alter index herald.message_app rename to message_legacy_app;
alter index herald.message_event_type rename to message_legacy_event_type;
alter index herald.message_erased rename to message_legacy_erased;
alter index herald.message_idempotency_key rename to message_legacy_idempotency_key;
drop index herald.message_idempotency;

alter table herald.delivery rename to delivery_legacy;
alter index herald.delivery_pkey rename to delivery_legacy_pkey;
alter index herald.delivery_endpoint_pending rename to delivery_legacy_endpoint_pending;
alter index herald.delivery_in_flight rename to delivery_legacy_in_flight;
alter index herald.delivery_endpoint rename to delivery_legacy_endpoint;
alter index herald.delivery_dead rename to delivery_legacy_dead;
alter index herald.delivery_endpoint_dead rename to delivery_legacy_endpoint_dead;
alter index herald.delivery_message_endpoint rename to delivery_legacy_message_endpoint;

alter table herald.attempt rename to attempt_legacy;
alter index herald.attempt_pkey rename to attempt_legacy_pkey;
alter index herald.attempt_message rename to attempt_legacy_message;
alter index herald.attempt_endpoint rename to attempt_legacy_endpoint;
alter index herald.attempt_delivery rename to attempt_legacy_delivery;
alter index herald.attempt_endpoint_failed rename to attempt_legacy_endpoint_failed;

create table herald.message (like herald.message_legacy including defaults including constraints)
    partition by range (id);
alter table herald.message drop constraint message_legacy_bound;
alter table herald.message add primary key (id);
create index message_app on herald.message (app_id, id);
create index message_event_type on herald.message (app_id, event_type, id);
create index message_erased on herald.message (id) where payload_erased_at is not null;
create index message_idempotency_key on herald.message (app_id, idempotency_key)
    where idempotency_key is not null;

create table herald.delivery (like herald.delivery_legacy including defaults including constraints)
    partition by range (id);
alter table herald.delivery drop constraint delivery_legacy_bound;
-- No default: every insert says which message time the id carries (herald.uuid_v7_at).
alter table herald.delivery alter column id drop default;
alter table herald.delivery add primary key (id);
create index delivery_endpoint_pending on herald.delivery (endpoint_id, next_attempt_at)
    where state = 'pending';
create index delivery_in_flight on herald.delivery (endpoint_id) where state = 'in_flight';
create index delivery_endpoint on herald.delivery (endpoint_id, id);
create index delivery_dead on herald.delivery (id) where state = 'dead';
create index delivery_endpoint_dead on herald.delivery (endpoint_id, id) where state = 'dead';

create table herald.attempt (like herald.attempt_legacy including defaults including constraints)
    partition by range (id);
alter table herald.attempt drop constraint attempt_legacy_bound;
alter table herald.attempt add primary key (id);
create index attempt_message on herald.attempt (message_id, id);
create index attempt_endpoint on herald.attempt (endpoint_id, id);
create index attempt_delivery on herald.attempt (delivery_id);
create index attempt_endpoint_failed on herald.attempt (endpoint_id, id)
    where outcome <> 'succeeded';

do $$
declare
    v_bound uuid := herald.uuid_v7_floor(
        (select ends_at from herald.history_partition where kind = 'message' and suffix = 'legacy'));
    v_attempt_bound uuid := herald.uuid_v7_floor(
        (select ends_at from herald.history_partition where kind = 'attempt' and suffix = 'legacy'));
begin
    -- A database with no history yet (a new install) keeps no legacy partitions: the
    -- first partitions start now.
    if not exists (select 1 from herald.message_legacy)
       and not exists (select 1 from herald.delivery_legacy)
       and not exists (select 1 from herald.attempt_legacy) then
        drop table herald.attempt_legacy, herald.delivery_legacy, herald.message_legacy;
        delete from herald.history_partition where suffix = 'legacy';
        return;
    end if;
    execute format('alter table herald.message attach partition herald.message_legacy
                    for values from (minvalue) to (%L)', v_bound);
    execute format('alter table herald.delivery attach partition herald.delivery_legacy
                    for values from (minvalue) to (%L)', v_bound);
    execute format('alter table herald.attempt attach partition herald.attempt_legacy
                    for values from (minvalue) to (%L)', v_attempt_bound);
end
$$;

create table herald.message_default partition of herald.message default;
alter table herald.message_default add foreign key (app_id)
    references herald.application (id) on delete cascade;
create table herald.delivery_default partition of herald.delivery default;
create unique index delivery_default_message_endpoint
    on herald.delivery_default (message_id, endpoint_id);
alter table herald.delivery_default add foreign key (message_id)
    references herald.message_default (id) on delete cascade;
alter table herald.delivery_default add foreign key (endpoint_id)
    references herald.endpoint (id) on delete cascade;
create table herald.attempt_default partition of herald.attempt default;

-- The feed's triggers, on the partitioned tables. Rows that retention moves into a default
-- partition (herald.drop_history_partition) are not news: it says so in herald.moving.
create or replace function herald.feed_message_created() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    if current_setting('herald.moving', true) = 'on' then
        return null;
    end if;
    insert into event (kind, app_id, event_type, ref_id)
    select 'message.created', n.app_id, n.event_type, n.id from inserted n order by n.id;
    return null;
end
$$;
create trigger feed_message_created after insert on herald.message
    referencing new table as inserted
    for each statement execute function herald.feed_message_created();
create trigger feed_attempt after insert on herald.attempt
    referencing new table as inserted
    for each statement execute function herald.feed_attempt();
create constraint trigger feed_delivery_dead after update of state on herald.delivery
    deferrable initially deferred
    for each row when (new.state = 'dead' and old.state <> 'dead')
    execute function herald.feed_delivery_dead();

-- Idempotency keys in their window (see herald.enqueue below), filled from the keyed
-- messages of the window (the window of the connection that migrates: Herald's). The
-- manager forgets keys older than the retention (herald.prune_idempotency_keys).
create table herald.idempotency_key (
    app_id     uuid not null references herald.application (id) on delete cascade,
    key        text not null,
    message_id uuid not null,
    created_at timestamptz not null,
    primary key (app_id, key)
);
create index idempotency_key_created on herald.idempotency_key (created_at);
insert into herald.idempotency_key (app_id, key, message_id, created_at)
select distinct on (m.app_id, m.idempotency_key) m.app_id, m.idempotency_key, m.id, m.created_at
  from herald.message m
 where m.idempotency_key is not null
   and m.created_at > now() - herald.idempotency_window()
 order by m.app_id, m.idempotency_key, m.created_at desc;

create function herald.prune_idempotency_keys(p_older_than interval) returns bigint
language sql
set search_path = herald, pg_temp
as $$
    with old as (
        select app_id, key from idempotency_key
         where created_at < now() - p_older_than
         limit 10000
    ), gone as (
        delete from idempotency_key k using old
         where k.app_id = old.app_id and k.key = old.key
           and k.created_at < now() - p_older_than
        returning 1
    )
    select count(*) from gone
$$;

-- A fresh UUIDv7 that carries the time of another: a delivery's id carries its message's,
-- so the two share a partition.
create function herald.uuid_v7_at(p_like uuid) returns uuid
language sql volatile parallel safe as $$
  select encode(overlay(uuid_send(herald.uuid_v7())
                        placing substring(uuid_send(p_like) from 1 for 6)
                        from 1 for 6), 'hex')::uuid
$$;

-- The live floor: where, in the history's time order, deliveries that are still pending
-- or in flight can be found. The claim, direct dispatch's "anything waiting?" and the lease
-- sweep look for live deliveries by endpoint and state, which no partition key bounds: with
-- a month of daily partitions each such probe visited every partition's index (the burst
-- on 34 partitions of history spent 0.37 ms more per send, 79% of the empty database's
-- deliveries per second). Live deliveries are nearly all in the newest partitions, so these
-- statements also say `id >= ` the floor (herald.enqueue below; herald.claim_next in
-- 0018), and PostgreSQL skips every partition below it (the default partition, where kept
-- ones wait, is always read).
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

-- As 0009, with three changes. A delivery's id carries its message's time. Direct
-- dispatch's look for due deliveries starts at the live floor. And a key is one
-- message within its window through herald.idempotency_key, a small table of its own with a
-- unique (app_id, key) (a partitioned table can only have unique indexes that contain its
-- partition key): a send claims the key for its new message unless the key's message is
-- within the window, in which case that message answers (one primary-key probe, in its
-- partition). Concurrent sends of a key wait for each other on the unique index, as before;
-- a caller at REPEATABLE READ or SERIALIZABLE that conflicts with a send its snapshot cannot
-- see gets serialization_failure, and sends again.
create function herald.enqueue(
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

-- As 0001.
create function herald.send_message(
    p_app text,
    p_event_type text,
    p_payload json,
    p_idempotency_key text default null
) returns herald.message
language sql
set search_path = herald, pg_temp
as $$
    select message from herald.enqueue(p_app, p_event_type, p_payload, p_idempotency_key,
                                       null, null, '{}')
$$;

-- Partitions are named after the UTC time they start at.
create function herald.history_suffix(p_from timestamptz) returns text
language sql immutable as $$
    select 'p' || to_char(p_from at time zone 'UTC', 'YYYYMMDD_HH24MISS')
$$;

-- Creates the partition (a message/delivery pair, or an attempt partition) for
-- [p_from, p_to), moving in the rows that waited in the default partitions for it.
-- Runs in its caller's transaction: all of it happens, or none.
create function herald.create_history_partition(p_kind text, p_from timestamptz,
                                                p_to timestamptz)
returns text
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_suffix text := history_suffix(p_from);
    v_lo uuid := uuid_v7_floor(p_from);
    v_hi uuid := uuid_v7_floor(p_to);
    v_message text := 'message_' || v_suffix;
    v_delivery text := 'delivery_' || v_suffix;
    v_attempt text := 'attempt_' || v_suffix;
    v_rows bigint;
    v_moved bigint := 0;
begin
    if p_kind = 'message' then
        -- Nothing may arrive in the default partitions between the move below and the
        -- attach, which checks that none of their rows belongs to the new range.
        lock table message_default, delivery_default in exclusive mode;
        execute format('create table %I (like message including defaults including constraints)',
                       v_message);
        execute format('create table %I (like delivery including defaults including constraints)',
                       v_delivery);
        -- Deliveries first: deleting their messages from message_default would cascade.
        execute format('with moved as (delete from delivery_default where id >= $1 and id < $2
                                       returning *)
                        insert into %I select * from moved', v_delivery) using v_lo, v_hi;
        get diagnostics v_rows = row_count;
        v_moved := v_moved + v_rows;
        execute format('with moved as (delete from message_default where id >= $1 and id < $2
                                       returning *)
                        insert into %I select * from moved', v_message) using v_lo, v_hi;
        get diagnostics v_rows = row_count;
        v_moved := v_moved + v_rows;
        execute format('alter table %I add foreign key (app_id)
                        references application (id) on delete cascade', v_message);
        execute format('alter table message attach partition %I for values from (%L) to (%L)',
                       v_message, v_lo, v_hi);
        execute format('create unique index %I on %I (message_id, endpoint_id)',
                       v_delivery || '_message_endpoint', v_delivery);
        execute format('alter table %I add foreign key (message_id)
                        references %I (id) on delete cascade', v_delivery, v_message);
        execute format('alter table %I add foreign key (endpoint_id)
                        references endpoint (id) on delete cascade', v_delivery);
        execute format('alter table delivery attach partition %I for values from (%L) to (%L)',
                       v_delivery, v_lo, v_hi);
    elsif p_kind = 'attempt' then
        lock table attempt_default in exclusive mode;
        execute format('create table %I (like attempt including defaults including constraints)',
                       v_attempt);
        execute format('with moved as (delete from attempt_default where id >= $1 and id < $2
                                       returning *)
                        insert into %I select * from moved', v_attempt) using v_lo, v_hi;
        get diagnostics v_moved = row_count;
        execute format('alter table attempt attach partition %I for values from (%L) to (%L)',
                       v_attempt, v_lo, v_hi);
    else
        raise exception 'herald: no history partitions of kind %', p_kind;
    end if;
    insert into history_partition (kind, suffix, starts_at, ends_at)
    values (p_kind, v_suffix, p_from, p_to);
    return format('created %s partition %s [%s, %s), %s rows moved in from the default',
                  p_kind, v_suffix, p_from, p_to, v_moved);
end
$$;

-- Drops a partition (a message/delivery pair, or an attempt partition) whole. A message of
-- the pair with a delivery still pending or in flight is never removed: it moves, with all
-- its deliveries, to the default partitions first, in the same transaction, which holds
-- both tables' ACCESS EXCLUSIVE locks for it (nothing can change a row meanwhile; a replay
-- that comes after finds the message moved, or gone). More live deliveries than p_max_live
-- would hold those locks for long: the pair is then kept, and tried again later.
create function herald.drop_history_partition(p_kind text, p_suffix text, p_max_live bigint)
returns text
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_message text := 'message_' || p_suffix;
    v_delivery text := 'delivery_' || p_suffix;
    v_attempt text := 'attempt_' || p_suffix;
    v_live bigint := 0;
    v_kept bigint := 0;
begin
    if p_kind = 'message' then
        execute format('select count(*) from %I where state in (''pending'', ''in_flight'')',
                       v_delivery) into v_live;
        if v_live > p_max_live then
            return format('kept message partition %s: %s deliveries still pending or in flight',
                          p_suffix, v_live);
        end if;
        -- The order a send takes them in: message, then delivery.
        lock table message, delivery in access exclusive mode;
        -- Counted again under the lock, always: it is this count that decides (a replay
        -- that committed while this waited made a delivery live).
        execute format('select count(*) from %I where state in (''pending'', ''in_flight'')',
                       v_delivery) into v_live;
        if v_live > p_max_live then
            return format('kept message partition %s: %s deliveries still pending or in flight',
                          p_suffix, v_live);
        end if;
        execute format('alter table delivery detach partition %I', v_delivery);
        execute format('alter table message detach partition %I', v_message);
        if v_live > 0 then
            perform set_config('herald.moving', 'on', true);
            execute format('insert into message
                            select m.* from %I m
                             where m.id in (select d.message_id from %I d
                                             where d.state in (''pending'', ''in_flight''))',
                           v_message, v_delivery);
            get diagnostics v_kept = row_count;
            execute format('insert into delivery
                            select d.* from %I d
                             where d.message_id in (select l.message_id from %I l
                                                     where l.state in (''pending'', ''in_flight''))',
                           v_delivery, v_delivery);
            perform set_config('herald.moving', '', true);
        end if;
        execute format('drop table %I, %I', v_delivery, v_message);
    elsif p_kind = 'attempt' then
        execute format('drop table %I', v_attempt);
    else
        raise exception 'herald: no history partitions of kind %', p_kind;
    end if;
    delete from history_partition where kind = p_kind and suffix = p_suffix;
    return format('dropped %s partition %s%s', p_kind, p_suffix,
                  case when v_kept > 0
                       then format(', %s messages still being delivered kept', v_kept)
                       else '' end);
end
$$;

-- What waits in the default partitions past p_cutoff and is done, in a small batch: the
-- messages removed.
create function herald.sweep_history_default(p_cutoff timestamptz) returns bigint
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_rows bigint;
begin
    -- Finished deliveries first: a delete rechecks its condition on a row that changed
    -- meanwhile, so a delivery a replay made pending again stays. Then messages left
    -- without any delivery, each locked first (one a replay holds is skipped: its replay
    -- may be adding a delivery).
    with done as (
        select d.id from delivery_default d
         where d.id < uuid_v7_floor(p_cutoff) and d.state in ('succeeded', 'dead')
         limit 1000
    )
    delete from delivery_default d using done
     where d.id = done.id and d.state in ('succeeded', 'dead');
    with bare as (
        select m.id from message_default m
         where m.id < uuid_v7_floor(p_cutoff)
           and not exists (select 1 from delivery_default d where d.message_id = m.id)
         limit 1000
           for update skip locked
    )
    delete from message_default m using bare
     where m.id = bare.id
       and not exists (select 1 from delivery_default d where d.message_id = m.id);
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- One step of keeping history to its retention, in the caller's transaction; null when
-- there is nothing to do, or what was kept (starting 'kept') when that is all. Only one process at a time: the others get 'busy' (the lock is
-- the migrations' own, so this never runs during a migration either). The steps, in order:
-- create the next partition when the ones made cover less than p_ahead from now (after a
-- long stop, one partition covers the whole gap, not a row of empty ones); drop the oldest
-- partition wholly older than the retention; remove, in a small batch, what waits in the
-- default partitions past retention and is done; forget finished recovers past retention.
create function herald.manage_history(p_interval interval, p_ahead interval,
                                      p_retention interval, p_max_live bigint)
returns text
language plpgsql
set search_path = herald, pg_temp
as $$
declare
    v_kind text;
    v_end timestamptz;
    v_step numeric := extract(epoch from p_interval);
    v_next timestamptz;
    v_cutoff timestamptz := now() - p_retention;
    v_part record;
    v_result text;
    v_kept text;
    v_rows bigint;
begin
    if not pg_try_advisory_xact_lock(1752329325, 1) then
        return 'busy';
    end if;
    foreach v_kind in array array['message', 'attempt'] loop
        select max(ends_at) into v_end from history_partition where kind = v_kind;
        if v_end is null then
            v_end := to_timestamp(floor(extract(epoch from now()) / v_step) * v_step);
        end if;
        if v_end < now() + p_ahead then
            v_next := to_timestamp((floor(extract(epoch from greatest(v_end, now())) / v_step) + 1)
                                   * v_step);
            return create_history_partition(v_kind, v_end, v_next);
        end if;
    end loop;

    for v_part in select kind, suffix from history_partition
                   where ends_at <= v_cutoff order by starts_at, kind loop
        v_result := drop_history_partition(v_part.kind, v_part.suffix, p_max_live);
        if v_result like 'dropped%' then
            return v_result;
        end if;
        v_kept := concat_ws('; ', v_kept, v_result);
    end loop;

    v_rows := sweep_history_default(v_cutoff);
    if v_rows > 0 then
        return format('removed %s finished messages past retention from message_default', v_rows);
    end if;
    with old as (select id from attempt_default where id < uuid_v7_floor(v_cutoff) limit 1000)
    delete from attempt_default a using old where a.id = old.id;
    get diagnostics v_rows = row_count;
    if v_rows > 0 then
        return format('removed %s attempts past retention from attempt_default', v_rows);
    end if;
    delete from recovery where finished_at < v_cutoff;
    get diagnostics v_rows = row_count;
    if v_rows > 0 then
        return format('removed %s finished recovers past retention', v_rows);
    end if;
    return v_kept;
end
$$;
