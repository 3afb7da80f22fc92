-- Two SQL helpers that failed on values a request can carry (found by a review, issue 18's
-- session of 2026-12-04).
--
-- herald.jsonb_or_null caught only the errors of `\u0000` (22P05, 22023), but the json type
-- accepts more that jsonb refuses: a lone surrogate (`"\udc00"`, 22P02) or a number past
-- numeric's range (`1e200000`, "value overflows numeric format", 22003). A send of such a payload to an application with
-- a filtered endpoint answered 500; stored before a filter existed, the message then failed
-- every replay, dry-run and recover whose window held it. Any error converting the payload
-- now means what `\u0000` already did: it contains no filter, and reaches the endpoints
-- without one.
--
-- herald.uuid_v7_floor turned a time before 1970 into a negative millisecond count whose low
-- six bytes start `ff…`, above every real id, and one after the year 10889 into one that
-- wraps: a recover since 1969 queued none of the dead deliveries it counted. The time is now
-- held between the first and the last millisecond a UUIDv7 can carry, as the Rust twin
-- (`search::id_floor`) already did at the low end.

create or replace function herald.jsonb_or_null(p_payload json) returns jsonb
language plpgsql immutable parallel safe
as $$
begin
    return p_payload::jsonb;
exception when others then
    return null;
end
$$;

create or replace function herald.uuid_v7_floor(p_at timestamptz) returns uuid
language sql immutable parallel safe as $$
  select encode(overlay('\x00000000000070008000000000000000'::bytea
                        placing substring(int8send(least(greatest(
                                    (extract(epoch from p_at) * 1000)::numeric, 0),
                                    281474976710655)::bigint) from 3)
                        from 1 for 6), 'hex')::uuid
$$;
