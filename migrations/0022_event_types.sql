-- The event-type catalog (issue 17): the events a sender publishes, each with a description,
-- an optional JSON Schema (2020-12, checked by Herald when stored) and examples. A new,
-- empty table: nothing existing is rewritten.
create table herald.event_type (
    name        text primary key check (name ~ '^[A-Za-z0-9_.-]+$' and length(name) <= 256),
    description text not null default '' check (length(description) <= 4096),
    schema      jsonb,
    examples    jsonb not null default '[]' check (jsonb_typeof(examples) = 'array'),
    deprecated  boolean not null default false,
    archived    boolean not null default false,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
