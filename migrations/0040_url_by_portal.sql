-- Whether an endpoint's URL was set by a portal customer (found by a review, issue 18's
-- session of 2026-12-04).
--
-- With HERALD_ALLOW_PRIVATE_TARGETS on and HERALD_PORTAL_ALLOW_PRIVATE_TARGETS off, the
-- portal refused a private IP literal, but a host name is only resolved when the worker
-- connects, and the worker allowed private addresses to every endpoint: a customer could aim
-- an endpoint at `localhost` or an internal name, send it a test event and read the answer
-- in the portal. The worker now sends to an endpoint whose URL a customer set with a client
-- that resolves to public addresses only, and reads this column (with the URL) to tell.
--
-- A constant default: no table rewrite. Existing endpoints count as the API's: which of
-- them a customer set was not recorded.

alter table herald.endpoint add column url_by_portal boolean not null default false;
