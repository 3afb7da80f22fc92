//! The validation pair (issue 17): `burst validated`, the burst sent as an event type whose
//! schema is in the catalog, so that Herald checks every payload against it before storing
//! anything, and `burst unvalidated`, the same burst as a type the catalog does not have,
//! which Herald does not check. The payloads are the same 256 bytes either way, valid
//! against the schema; only the type differs, and the two names have the same length.
//!
//! This machine drifts by more from one minute to the next than validation may cost, so the
//! two alternate in rounds on the same Herald and cluster, and every round checks that it
//! measured what its name says: a payload the schema refuses, sent with the round's type,
//! must be refused (422) after a validated round and accepted after an unvalidated one.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};

use super::Run;
use super::burst_sse::delivered;
use crate::driver::Message;
use crate::process::cpu_seconds;
use crate::results::{ScenarioResult, ValidationRound};

/// The burst as a type with a schema in the catalog.
pub const BURST_VALIDATED: &str = "burst validated";
/// The same burst as a type the catalog does not have.
pub const BURST_UNVALIDATED: &str = "burst unvalidated";
/// In the catalog, with [`schema`].
const TYPED: &str = "bench.typed";
/// Not in the catalog; as long as [`TYPED`], so that the bodies differ by nothing else.
const UNTYPED: &str = "bench.loose";
const PAYLOAD_BYTES: usize = 256;
/// Where the checks after each round send (no endpoints: nothing is delivered).
const CHECKS_APP: &str = "burst validation checks";

/// A typical schema for a 256-byte event: an invoice, eight typed properties of which seven
/// required, a nested object and an array of objects (both closed), patterns, enums,
/// bounds and formats. Formats are annotations in 2020-12 unless a validator is asked to
/// assert them; each validated round records whether Herald does ([`bad_format`]).
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "type", "created_at", "amount", "currency", "customer", "lines"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "pattern": "^evt_[0-9]{8}$"},
            "type": {"enum": ["invoice.paid", "invoice.refunded", "invoice.voided"]},
            "created_at": {"type": "string", "format": "date-time"},
            "amount": {"type": "integer", "minimum": 1, "maximum": 100_000_000},
            "currency": {"enum": ["EUR", "USD", "GBP", "JPY"]},
            "customer": {
                "type": "object",
                "required": ["id", "email", "country"],
                "additionalProperties": false,
                "properties": {
                    "id": {"type": "string", "pattern": "^cus_[0-9]{6}$"},
                    "email": {"type": "string", "format": "email", "maxLength": 254},
                    "country": {"type": "string", "pattern": "^[A-Z]{2}$"}
                }
            },
            "lines": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "required": ["sku", "quantity"],
                    "additionalProperties": false,
                    "properties": {
                        "sku": {"type": "string", "pattern": "^SKU-[0-9]{4}$"},
                        "quantity": {"type": "integer", "minimum": 1}
                    }
                }
            },
            "memo": {"type": "string", "maxLength": 500}
        }
    })
}

/// Message `n` of the pair: an invoice valid against [`schema`], its `memo` padded so that
/// the payload is exactly `bytes` long (as sent) when it can be.
pub fn invoice(n: usize, bytes: usize) -> Value {
    let currency = ["EUR", "USD", "GBP"][n % 3];
    let mut payload = json!({
        "id": format!("evt_{:08}", n % 100_000_000),
        "type": "invoice.paid",
        "created_at": format!("2026-12-02T{:02}:{:02}:{:02}Z", n / 3600 % 24, n / 60 % 60, n % 60),
        "amount": 100 + n % 9_900,
        "currency": currency,
        "customer": {
            "id": format!("cus_{:06}", n % 1_000_000),
            "email": format!("c{:06}@example.com", n % 1_000_000),
            "country": "DE"
        },
        "lines": [{"sku": format!("SKU-{:04}", n % 10_000), "quantity": 1 + n % 5}],
        "memo": ""
    });
    let short_by = bytes.saturating_sub(payload.to_string().len());
    payload["memo"] = "x".repeat(short_by).into();
    payload
}

/// What the schema refuses, deep inside: [`invoice`] with a lower-case country.
fn refused(n: usize) -> Value {
    let mut payload = invoice(n, PAYLOAD_BYTES);
    payload["customer"]["country"] = "de".into();
    payload
}

/// [`invoice`] whose only fault is a `format`: an e-mail address that is not one.
fn bad_format(n: usize) -> Value {
    let mut payload = invoice(n, PAYLOAD_BYTES);
    payload["customer"]["email"] = "not an e-mail address".into();
    payload
}

/// What Herald's check of one payload costs on its own: `check_against_catalog` parses the
/// payload into a `serde_json::Value` (the text itself is stored as sent) and validates it.
/// Done here in the same way, with the same `jsonschema`, on 1,000 of the pair's payloads:
/// (microseconds per payload for both, of which the parse), each the fastest of ten
/// batches, since on a shared machine a slow batch is one that was interrupted.
fn check_cost_us() -> anyhow::Result<(f64, f64)> {
    let validator =
        herald::http::event_types::check_schema(&schema()).map_err(anyhow::Error::msg)?;
    let payloads: Vec<String> = (0..1_000)
        .map(|n| invoice(n, PAYLOAD_BYTES).to_string())
        .collect();
    let fastest = |check: &dyn Fn(&str) -> bool| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..10 {
            let started = Instant::now();
            let passed = payloads.iter().filter(|p| check(p)).count();
            best = best.min(started.elapsed().as_secs_f64());
            anyhow::ensure!(passed == payloads.len(), "a payload failed its check");
        }
        Ok((best * 1e6 / payloads.len() as f64 * 100.0).round() / 100.0)
    };
    let parse = |p: &str| std::hint::black_box(serde_json::from_str::<Value>(p)).is_ok();
    let both =
        |p: &str| serde_json::from_str::<Value>(p).is_ok_and(|v| validator.validate(&v).is_ok());
    Ok((fastest(&both)?, fastest(&parse)?))
}

/// The rounds in order: unvalidated first in odd rounds, validated first in even ones
/// (off on, on off, …), so that over an even number of rounds a steady drift of the
/// machine, or the database growing by a burst a round, weighs on both sides alike.
pub fn order(rounds: usize) -> Vec<(usize, bool)> {
    (1..=rounds)
        .flat_map(|r| {
            let first = r % 2 == 0;
            [(r, first), (r, !first)]
        })
        .collect()
}

impl Run {
    /// `rounds` of each of the pair, alternating (see [`order`]), each a burst of `count`
    /// messages from `concurrency` senders to a new application with one endpoint.
    pub(super) async fn validation_pair(
        &mut self,
        rounds: usize,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<ScenarioResult>> {
        let (status, answer) = self
            .api
            .status(
                Method::POST,
                "/event-types",
                Some(&json!({
                    "name": TYPED,
                    "description": "herald-bench: an invoice, for the validation pair",
                    "schema": schema(),
                    "examples": [invoice(0, PAYLOAD_BYTES), invoice(9_999, PAYLOAD_BYTES)],
                })),
            )
            .await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "could not add {TYPED} to the catalog: {status} {answer}"
        );
        let (status, typed) = self
            .api
            .status(Method::GET, &format!("/event-types/{TYPED}"), None)
            .await?;
        anyhow::ensure!(
            status == 200 && typed["schema"].is_object(),
            "{TYPED} should be in the catalog with a schema: {status} {typed}"
        );
        let (status, untyped) = self
            .api
            .status(Method::GET, &format!("/event-types/{UNTYPED}"), None)
            .await?;
        anyhow::ensure!(
            status == 404,
            "{UNTYPED} should not be in the catalog: {status} {untyped}"
        );
        let (checks, _) = self.api.app_with_endpoints(CHECKS_APP, &[]).await?;

        let mut results = Vec::new();
        for (round, validated) in order(rounds) {
            let (base, event_type) = if validated {
                (BURST_VALIDATED, TYPED)
            } else {
                (BURST_UNVALIDATED, UNTYPED)
            };
            let name = format!("{base} {round}");
            let mut load = self.closed_loop(count, concurrency);
            load.payload_bytes = PAYLOAD_BYTES;
            load.message = Message {
                event_type,
                payload: invoice,
            };
            let (app, paths) = self.setup(&name, 1).await?;
            // The CPU seconds unrounded (the result's are to 0.1 s): a few percent of a
            // herald's 2 s is what is looked for.
            let cpu_before = cpu_seconds(self.herald_pid);
            let started = Instant::now();
            let mut result = self
                .measure(
                    &name,
                    &app,
                    &paths,
                    &load,
                    format!("closed loop, {concurrency} senders, {event_type}"),
                )
                .await?;
            let cpu = cpu_seconds(self.herald_pid);
            eprintln!(
                "{name}: {:.0} delivered/s ({:.1} s)",
                result.delivered_per_s,
                started.elapsed().as_secs_f64()
            );
            let per_delivery = |secs: f64| {
                let ms = 1000.0 * secs / delivered(&result).max(1) as f64;
                (ms * 1000.0).round() / 1000.0
            };
            result.validation = Some(ValidationRound {
                round,
                validated,
                event_type: event_type.to_owned(),
                payload_bytes: invoice(0, PAYLOAD_BYTES).to_string().len(),
                herald_cpu_ms_per_delivery: per_delivery(cpu.herald - cpu_before.herald),
                postgres_cpu_ms_per_delivery: per_delivery(cpu.postgres - cpu_before.postgres),
                refused_payload_status: self
                    .send_status(&checks, event_type, refused(round))
                    .await?,
                bad_format_status: if validated {
                    Some(
                        self.send_status(&checks, event_type, bad_format(round))
                            .await?,
                    )
                } else {
                    None
                },
                check_us: None,
                check_parse_us: None,
            });
            if validated {
                let (check_us, parse_us) = check_cost_us()?;
                let v = result.validation.as_mut().expect("just set");
                (v.check_us, v.check_parse_us) = (Some(check_us), Some(parse_us));
            }
            results.push(result);
        }
        Ok(results)
    }

    /// What Herald answers to one message of `event_type` with `payload`, sent to `app`.
    async fn send_status(
        &self,
        app: &str,
        event_type: &str,
        payload: Value,
    ) -> anyhow::Result<u16> {
        let body = json!({"event_type": event_type, "payload": payload});
        let path = format!("/apps/{app}/messages");
        Ok(self.api.status(Method::POST, &path, Some(&body)).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every payload the pair sends is 256 bytes and valid; the check's is refused where
    /// it says.
    #[test]
    fn the_payloads_fit_the_schema() {
        // As Herald checks a schema it is given, and compiles it.
        let validator = herald::http::event_types::check_schema(&schema()).unwrap();
        for n in [0, 1, 59, 3_599, 9_999, 99_999, 999_999, 12_345_678] {
            let p = invoice(n, PAYLOAD_BYTES);
            assert_eq!(p.to_string().len(), PAYLOAD_BYTES, "{p}");
            assert!(p["memo"].as_str().unwrap().len() > 10, "{p}");
            if let Err(e) = validator.validate(&p) {
                panic!("{p}: {e}");
            }
        }
        let refused = refused(1);
        let e = validator.validate(&refused).unwrap_err();
        assert_eq!(e.instance_path().to_string(), "/customer/country");
        assert_eq!(TYPED.len(), UNTYPED.len());
    }

    #[test]
    fn rounds_alternate_and_balance() {
        assert_eq!(
            order(2),
            [(1, false), (1, true), (2, true), (2, false)].to_vec()
        );
        assert_eq!(order(3).len(), 6);
    }
}
