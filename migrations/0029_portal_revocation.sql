-- Portal links can be ended before they expire: `DELETE /apps/{app}/portal` sets this, and
-- every link of the application made until then is refused from then on (links carry the
-- time they were made). Null: never. A nullable column without a default: adding it
-- rewrites nothing and holds its lock only for the catalog change.

alter table herald.application add column portal_revoked_at timestamptz;
