-- Views that cost the window they show, not the history behind it (issue 14 point 6): the
-- dashboard's chart and last-hour figures, and an endpoint's success rate over 24 hours,
-- read per-minute counts of attempts instead of counting the attempts themselves (3
-- million in the last two hours took the overview 2.7 s to count).
--
-- One row per endpoint and minute in which it had attempts, written by a statement
-- trigger in the same transaction as the attempts it counts, so the counts are exactly
-- what committed, whoever wrote the attempts. A completion batch adds one row (or updates
-- it: ON CONFLICT) per endpoint it touched, in key order, so that two concurrent batches
-- lock the rows they share in the same order. Rows older than two days are removed by the
-- history manager (herald.manage_history); the views read 24 hours at most.
--
-- Counting starts with this migration: an upgraded database shows, for its first day, the
-- attempts made since the upgrade (the attempts made before stay in their tables).
create table herald.attempt_minute (
    endpoint_id uuid not null,
    minute      timestamptz not null,
    app_id      uuid not null,
    succeeded   bigint not null default 0,
    total       bigint not null default 0,
    primary key (endpoint_id, minute)
);
-- The overview sums every endpoint's minutes of the last hour.
create index attempt_minute_minute on herald.attempt_minute (minute);

create function herald.rollup_attempt() returns trigger
language plpgsql
set search_path = herald, pg_temp
as $$
begin
    insert into attempt_minute as r (endpoint_id, minute, app_id, succeeded, total)
    select n.endpoint_id, date_trunc('minute', n.created_at), n.app_id,
           count(*) filter (where n.outcome = 'succeeded'), count(*)
      from inserted n
     group by 1, 2, 3
     order by 1, 2
    on conflict (endpoint_id, minute) do update
       set succeeded = r.succeeded + excluded.succeeded, total = r.total + excluded.total;
    return null;
end
$$;

create trigger rollup_attempt after insert on herald.attempt
    referencing new table as inserted
    for each statement execute function herald.rollup_attempt();

-- The history manager's last step: rollup minutes past two days.
create or replace function herald.prune_rollups() returns bigint
language sql
set search_path = herald, pg_temp
as $$
    with old as (
        select endpoint_id, minute from attempt_minute
         where minute < now() - interval '2 days'
         limit 10000
    ), gone as (
        delete from attempt_minute r using old
         where r.endpoint_id = old.endpoint_id and r.minute = old.minute
        returning 1
    )
    select count(*) from gone
$$;
