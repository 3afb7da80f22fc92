-- Partitioned history, step 2 of 3: every existing row is checked against the bound 0013
-- set. VALIDATE CONSTRAINT scans under SHARE UPDATE EXCLUSIVE, which lets every read and
-- write go on: this is the one part of the upgrade that takes time in proportion to the
-- history, and nothing waits for it.
alter table herald.message validate constraint message_legacy_bound;
alter table herald.delivery validate constraint delivery_legacy_bound;
alter table herald.attempt validate constraint attempt_legacy_bound;
