-- Most messages carry no idempotency key: index only those that do.
alter table herald.message drop constraint message_app_id_idempotency_key_key;
create unique index message_idempotency on herald.message (app_id, idempotency_key)
    where idempotency_key is not null;
