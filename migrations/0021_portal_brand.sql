-- The customer portal's brand for one application (issue 16): product name, accent colour
-- and logo URL as JSON, checked by Herald when set; null uses HERALD_PORTAL_*. A column
-- without a default: adding it rewrites nothing and holds its lock for an instant.
alter table herald.application add column portal_brand jsonb;
