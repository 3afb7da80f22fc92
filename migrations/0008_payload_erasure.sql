-- Payload erasure (DELETE /api/v1/apps/{app}/messages/{msg}/payload). An erased message
-- keeps its row, and so its id, event type, time, deliveries and attempts; its payload
-- becomes JSON null (the column stays `not null`: herald.enqueue, herald.send_message and
-- herald.claim_next read it unchanged) and this says when it was erased. Null means "not
-- erased", so the column needs no default: adding it rewrites nothing and holds its lock
-- only for the catalog change.
alter table herald.message add column payload_erased_at timestamptz;
