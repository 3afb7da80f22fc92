-- Retention counts and moves a partition's live deliveries by index (found by a review,
-- issue 18's session of 2026-12-04).
--
-- herald.drop_history_partition decided whether a message partition could go by counting
-- its deliveries `where state in ('pending', 'in_flight')`, once before and once after it
-- took ACCESS EXCLUSIVE on message and delivery (every partition: no send, claim,
-- completion or page proceeds meanwhile). No index answers `in (…)` of two states, so both
-- counts, and the two inserts that move the live rows out, read the whole partition: a day
-- of history, under the lock. Each state is now counted on its own partial index
-- (delivery_endpoint_pending, delivery_in_flight), at most p_max_live + 1 rows each, and the
-- live rows are found the same way; `enable_seqscan = off` and `jit = off` as in the other
-- functions that must stay on their indexes (0034, 0035).

create or replace function herald.drop_history_partition(p_kind text, p_suffix text,
                                                         p_max_live bigint)
returns text
language plpgsql
set search_path = herald, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    v_message text := 'message_' || p_suffix;
    v_delivery text := 'delivery_' || p_suffix;
    v_attempt text := 'attempt_' || p_suffix;
    -- The partition's live deliveries, at most p_max_live + 1 of each state, each state on
    -- its partial index.
    v_count text := format(
        'select (select count(*) from (select 1 from %1$I where state = ''pending''
                                        limit $1 + 1) p)
              + (select count(*) from (select 1 from %1$I where state = ''in_flight''
                                        limit $1 + 1) f)', v_delivery);
    v_live_ids text := format(
        'select d.message_id from %1$I d where d.state = ''pending''
         union all
         select d.message_id from %1$I d where d.state = ''in_flight''', v_delivery);
    v_live bigint := 0;
    v_kept bigint := 0;
begin
    if p_kind = 'message' then
        execute v_count into v_live using p_max_live;
        if v_live > p_max_live then
            return format('kept message partition %s: %s deliveries still pending or in flight',
                          p_suffix, v_live);
        end if;
        -- The order a send takes them in: message, then delivery.
        lock table message, delivery in access exclusive mode;
        -- Counted again under the lock, always: it is this count that decides (a replay
        -- that committed while this waited made a delivery live).
        execute v_count into v_live using p_max_live;
        if v_live > p_max_live then
            return format('kept message partition %s: %s deliveries still pending or in flight',
                          p_suffix, v_live);
        end if;
        execute format('alter table delivery detach partition %I', v_delivery);
        execute format('alter table message detach partition %I', v_message);
        if v_live > 0 then
            perform set_config('herald.moving', 'on', true);
            execute format('insert into message
                            select m.* from %I m where m.id in (%s)', v_message, v_live_ids);
            get diagnostics v_kept = row_count;
            execute format('insert into delivery
                            select d.* from %I d where d.message_id in (%s)',
                           v_delivery, v_live_ids);
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
