-- Payload erasure (DELETE /api/v1/apps/{app}/messages/{msg}/payload). An erased message
-- keeps its row, and so its id, event type, time, deliveries and attempts; its payload
-- becomes JSON null (the column stays `not null`: herald.enqueue, herald.send_message and
-- herald.claim_next read it unchanged) and this says when it was erased. Null means "not
-- erased", so the column needs no default: adding it rewrites nothing and holds its lock
-- only for the catalog change.
--
-- That lock is ACCESS EXCLUSIVE, and a request for it waits behind whatever holds any lock
-- on `message` (a long report, a transaction left open), while every send queues behind
-- the request. So each try waits at most 1.2 s (just past deadlock_timeout, so that an
-- autovacuum in the way is told to give way), and the migration tries again after a pause,
-- for about two minutes, before it gives up with a clear message.
do $$
declare
    tries int := 0;
begin
    loop
        begin
            set local lock_timeout = '1200ms';
            alter table herald.message add column if not exists payload_erased_at timestamptz;
            return;
        exception when lock_not_available then
            tries := tries + 1;
            if tries >= 60 then
                raise exception 'herald: could not lock herald.message to add payload_erased_at '
                                '(a long transaction holds it); end it and start Herald again';
            end if;
            perform pg_sleep(1);
        end;
    end loop;
end
$$;
