-- no-transaction
-- Which of a batch's messages were erased: every completion batch asks it of its
-- attempts' messages (db/deliveries.rs, `insert_attempts`), and a recover of every message
-- it looks at (db/replays.rs). Partial, so it holds only erased messages: nearly empty,
-- written only by an erasure, and each question is a probe of it rather than of the
-- message table's primary key and heap. The statements that ask it say
-- `payload_erased_at is not null` literally, so a generic plan may use it.
--
-- Built concurrently, alone in its file, as 0010 explains.
create index concurrently if not exists message_erased
    on herald.message (id) where payload_erased_at is not null;
