-- How far pruning of the feed's log has gone: the newest position it deleted. A client
-- resuming from before it may have missed a pruned event, even when nothing is left in the
-- log after its position to show that events were there. Written by the pruning itself, in
-- the same statement as the delete, so it can never lag behind what is gone.
create table herald.event_pruned (
    one boolean primary key default true check (one),
    xid xid8 not null,
    seq bigint not null
);
insert into herald.event_pruned (xid, seq) values ('0', 0);
