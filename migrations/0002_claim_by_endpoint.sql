-- Workers now claim endpoint by endpoint (see db/deliveries.rs): each endpoint's due rows
-- are found through this index, so an endpoint at its in-flight cap costs a claim one
-- index probe instead of a walk past its whole backlog.
create index delivery_endpoint_pending on herald.delivery (endpoint_id, next_attempt_at)
    where state = 'pending';
-- Expired leases are returned to 'pending' by a periodic sweep, not by the claim.
drop index herald.delivery_due;
