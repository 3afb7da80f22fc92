-- API tokens (issue 16): credentials other than the admin token, each with a name, scopes,
-- an optional application it is limited to and an optional expiry. Only a SHA-256 of the
-- secret is stored; the secret is shown once, when the token is created. Revoking deletes
-- the row, so every process refuses the token from its next request on.
create table herald.api_token (
    id           uuid primary key,
    name         text not null check (length(name) between 1 and 256),
    app_id       uuid references herald.application (id) on delete cascade,
    scopes       text[] not null check (cardinality(scopes) > 0),
    secret_hash  bytea not null unique,
    expires_at   timestamptz,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz
);
