-- Partitioned history (issue 14), step 1 of 3 (0013, 0014, 0016): the bound of the history that exists today.
--
-- Messages, deliveries and attempts become range-partitioned on their UUIDv7 ids
-- (0016). The tables as they are become one partition each, "legacy", holding every id
-- below a cutoff a little after now; it ages out past HERALD_RETENTION like any other
-- partition and is dropped whole. Attaching a table as a partition checks each of its rows
-- against the partition's bound unless a validated CHECK constraint already proves it, and
-- that check would hold the table's ACCESS EXCLUSIVE lock for a scan of the whole history.
-- So this migration adds the bound as NOT VALID constraints (a catalog change: the lock is
-- held for milliseconds, and rows written from now on are checked), 0014 validates them
-- under a lock that lets reads and writes go on, and 0016 attaches in milliseconds.
--
-- The cutoff is an hour after the upgrade, plus a second per 25 MB of history (what 0014's
-- scan and 0015's index build may take): the old tables keep taking the writes of processes
-- of the previous release, and of workers whose clocks run a little ahead (attempt ids are
-- made by the worker), until 0016 has run; from the cutoff on, new rows go to the new
-- partitions, and the legacy ones are dropped once the cutoff is past retention. Were a
-- row past the cutoff written anyway (a clock more than that hour ahead), 0014 would fail
-- with a check violation, an error, never a lost row.
--
-- history_partition lists the partitions Herald manages (src/db/history.rs): written in
-- the same transaction as the DDL that creates or drops them, so it never disagrees with
-- the catalog. 'message' partitions come in pairs, message_<suffix> and delivery_<suffix>,
-- with the same bounds: a delivery's id carries its message's time, so a message and all
-- of its deliveries share a partition and are dropped together. 'attempt' partitions hold
-- attempts by the time they were made.
create table herald.history_partition (
    kind      text not null check (kind in ('message', 'attempt')),
    suffix    text not null check (suffix ~ '^(legacy|p[0-9]{8}_[0-9]{6})$'),
    starts_at timestamptz not null,
    ends_at   timestamptz not null check (ends_at > starts_at),
    primary key (kind, starts_at),
    unique (kind, suffix)
);

do $$
declare
    v_bytes bigint;
    v_cutoff timestamptz;
    v_bound uuid;
    tries int := 0;
begin
    -- Each try waits at most 1.2 s for the locks, as 0008 explains. The bound is chosen
    -- once they are held: no row written while this waited can be past it.
    loop
        begin
            set local lock_timeout = '1200ms';
            lock table herald.message, herald.delivery, herald.attempt in access exclusive mode;
            exit;
        exception when lock_not_available then
            tries := tries + 1;
            if tries >= 60 then
                raise exception 'herald: could not lock the history tables to bound them '
                                '(a long transaction holds one); end it and start Herald again';
            end if;
            perform pg_sleep(1);
        end;
    end loop;
    select coalesce(sum(pg_table_size(t)), 0) into v_bytes
      from unnest(array['herald.message', 'herald.delivery', 'herald.attempt']::regclass[]) t;
    v_cutoff := date_trunc('second', clock_timestamp()) + interval '1 hour'
                + make_interval(secs => least(86400, v_bytes / 25000000));
    v_bound := herald.uuid_v7_floor(v_cutoff);
    insert into herald.history_partition (kind, suffix, starts_at, ends_at)
    values ('message', 'legacy', '-infinity', v_cutoff),
           ('attempt', 'legacy', '-infinity', v_cutoff);
    execute format('alter table herald.message add constraint message_legacy_bound
                    check (id < %L::uuid) not valid', v_bound);
    execute format('alter table herald.delivery add constraint delivery_legacy_bound
                    check (id < %L::uuid) not valid', v_bound);
    execute format('alter table herald.attempt add constraint attempt_legacy_bound
                    check (id < %L::uuid) not valid', v_bound);
end
$$;
