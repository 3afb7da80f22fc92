//! The table on the terminal, and (in `svg`) the SVG chart of latency against offered load.

use std::fmt::Write;

use crate::results::{
    BURST_RATIO_TARGET_PCT, DROP_TARGET_SECS, Report, SOAK_FLAT_PCT, SSE_DROP_TARGET_PCT,
    SSE_LAG_P99_TARGET_MS, VALIDATION_COST_TARGET_PCT, VIEW_P99_TARGET_MS, ValidationAb,
};

mod svg;

pub use svg::svg;

/// A Markdown table's first two lines: its column names and their alignment.
fn heading(t: &mut String, names: &str, alignment: &str) {
    let _ = writeln!(t, "{names}");
    let _ = writeln!(t, "{alignment}");
}

pub fn table(report: &Report) -> String {
    let mut t = String::new();
    let ceiling = report.ceiling_tps;
    let pct = |x: f64| match ceiling {
        Some(c) if c > 0.0 => format!("{:.1}%", 100.0 * x / c),
        _ => "-".into(),
    };
    let _ = writeln!(
        t,
        "Herald {} at {}; ceiling (pgbench, 64 clients, 1-row insert): {}",
        report.commit,
        report.when,
        ceiling.map_or("not measured".into(), |c| format!("{c:.0} tps"))
    );
    heading(
        &mut t,
        "| scenario | msgs | fan-out | accepted/s | % ceil | delivered/s | % ceil | CPU ms/delivery herald/pg | p50 ms | p90 ms | p99 ms | max ms | dup | lost | RSS MB | CPU s herald/pg/bench |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    );
    for s in &report.scenarios {
        let deliveries = (s.messages * s.fan_out.max(1)).max(1) as f64;
        let per_delivery = |secs: f64| 1000.0 * secs / deliveries;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {} | {:.0} | {} | {:.3}/{:.3} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {:.0} | {:.1}/{:.1}/{:.1} |",
            s.name,
            s.messages,
            s.fan_out,
            s.accepted_per_s,
            pct(s.accepted_per_s),
            s.delivered_per_s,
            pct(s.delivered_per_s),
            per_delivery(s.cpu_seconds.herald),
            per_delivery(s.cpu_seconds.postgres),
            s.latency.p50_ms,
            s.latency.p90_ms,
            s.latency.p99_ms,
            s.latency.max_ms,
            s.duplicates,
            s.lost,
            s.peak_rss_mb,
            s.cpu_seconds.herald,
            s.cpu_seconds.postgres,
            s.cpu_seconds.bench
        );
    }
    for s in &report.scenarios {
        if s.notes.as_object().is_some_and(|o| !o.is_empty()) {
            let mut notes = s.notes.clone();
            if let Some(o) = notes.as_object_mut() {
                o.remove("backlog_samples");
            }
            let _ = writeln!(t, "{}: {}", s.name, notes);
        }
    }
    sse_table(&mut t, report);
    validation_table(&mut t, report);
    history_table(&mut t, report);
    t
}

/// The validation pair: each round, then the medians and the verdict.
fn validation_table(t: &mut String, report: &Report) {
    let Some(ab) = ValidationAb::of(&report.scenarios) else {
        return;
    };
    let _ = writeln!(
        t,
        "\nValidation: the burst as a type with a schema in the catalog (validated) and as a type \
         the catalog does not have (unvalidated), same payload; rounds in the order run"
    );
    heading(
        t,
        "| round | scenario | event type | payload bytes | delivered/s | herald CPU ms/delivery | PostgreSQL CPU ms/delivery | refused payload answered | bad format answered | check alone µs (parse) | lost | dup | send errors |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for s in &report.scenarios {
        let Some(v) = &s.validation else { continue };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {}{} | {} | {} | {} | {} | {} |",
            v.round,
            s.name,
            v.event_type,
            v.payload_bytes,
            s.delivered_per_s,
            v.herald_cpu_ms_per_delivery,
            v.postgres_cpu_ms_per_delivery,
            v.refused_payload_status,
            if v.checked() { "" } else { " (WRONG)" },
            v.bad_format_status.map_or("-".into(), |c| c.to_string()),
            match (v.check_us, v.check_parse_us) {
                (Some(c), Some(p)) => format!("{c:.2} ({p:.2})"),
                _ => "-".into(),
            },
            s.lost,
            s.duplicates,
            s.send_errors
        );
    }
    let (off, on) = ab.delivered_per_s;
    let pct = |(off, on): (f64, f64)| format!("{:+.1}%", 100.0 * (on - off) / off.max(1e-9));
    let ratios: Vec<String> = ab.round_ratios.iter().map(|r| format!("{r:.3}")).collect();
    let _ = writeln!(
        t,
        "validated / unvalidated delivered/s by round: {}, median {:.3} (mean {:.3}, standard \
         error {:.3}); CPU ms per delivery, \
         median of the rounds' validated / unvalidated: herald {:.3}, PostgreSQL {:.3} (the \
         same work on both sides: the noise); medians over {} rounds each: delivered/s \
         {off:.0} unvalidated, {on:.0} validated ({:.3}); herald CPU ms/delivery {:.3} -> {:.3} \
         ({}); PostgreSQL {:.3} -> {:.3} ({})",
        ratios.join(", "),
        ab.ratio,
        ab.ratio_mean,
        ab.ratio_stderr,
        ab.herald_cpu_ratio,
        ab.postgres_cpu_ratio,
        ab.rounds,
        on / off.max(1e-9),
        ab.herald_cpu_ms_per_delivery.0,
        ab.herald_cpu_ms_per_delivery.1,
        pct(ab.herald_cpu_ms_per_delivery),
        ab.postgres_cpu_ms_per_delivery.0,
        ab.postgres_cpu_ms_per_delivery.1,
        pct(ab.postgres_cpu_ms_per_delivery)
    );
    if let (Some(check), Some(parse)) = (ab.check_us, ab.check_parse_us) {
        let _ = writeln!(
            t,
            "the check alone (parse into a serde_json::Value, validate; in the benchmark's process): \
             {check:.2} µs a payload, of which the parse {parse:.2} µs: {:.1}% of herald's median \
             CPU per unvalidated delivery",
            100.0 * check / (1000.0 * ab.herald_cpu_ms_per_delivery.0).max(1e-9)
        );
    }
    let _ = writeln!(
        t,
        "validation cost the burst {:.1}% of its deliveries/s, by the rounds' median ratio \
         (target: at most {VALIDATION_COST_TARGET_PCT}%): {}{}",
        ab.cost_pct,
        verdict(ab.target_met()),
        if ab.sound {
            ""
        } else {
            "; but a round lost, duplicated or refused messages, or did not validate as its \
             name says: the figures do not measure validation"
        }
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The `history` scenarios: the load, the views, the drop and the soak.
fn history_table(t: &mut String, report: &Report) {
    for s in &report.scenarios {
        if let Some(h) = &s.history {
            let _ = writeln!(
                t,
                "\nHistory: {} messages (one delivery, one attempt each) in {} partitions of {}, \
                 loaded in {:.1} s, vacuum analyze {:.1} s, settled {:.1} s; message {:.0} MB, \
                 delivery {:.0} MB, attempt {:.0} MB, total {:.0} MB",
                h.messages,
                h.partitions,
                h.partition_interval,
                h.load_secs,
                h.vacuum_analyze_secs,
                h.settle_secs,
                h.sizes.message_mb,
                h.sizes.delivery_mb,
                h.sizes.attempt_mb,
                h.sizes.total_mb()
            );
            let _ = writeln!(
                t,
                "{}: delivered/s {:.0}, {} of the empty-database burst's {} (target >= {BURST_RATIO_TARGET_PCT}%): {}",
                s.name,
                s.delivered_per_s,
                h.burst_ratio_pct.map_or("-".into(), |r| format!("{r:.1}%")),
                h.baseline_delivered_per_s
                    .map_or("-".into(), |b| format!("{b:.0}")),
                h.burst_ratio_pct
                    .map_or("unknown", |r| verdict(r >= BURST_RATIO_TARGET_PCT))
            );
            heading(
                t,
                &format!(
                    "| view | path | first ms | p50 ms | p99 ms | max ms | failures | p99 <= {VIEW_P99_TARGET_MS} ms |"
                ),
                "|---|---|---:|---:|---:|---:|---:|---|",
            );
            for v in &h.views {
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {}{} | {} |",
                    v.name,
                    v.path,
                    v.first_ms,
                    v.latency.p50_ms,
                    v.latency.p99_ms,
                    v.latency.max_ms,
                    v.failures,
                    v.failure
                        .as_ref()
                        .map_or(String::new(), |f| format!(" ({f})")),
                    verdict(v.failures == 0 && v.latency.p99_ms <= VIEW_P99_TARGET_MS)
                );
            }
            let d = &h.drop;
            let _ = writeln!(
                t,
                "drop: message/delivery pair {} ({} messages, {} deliveries) in {:.3} s, \
                 attempt partition {} ({} attempts) in {:.3} s (target < {DROP_TARGET_SECS} s: {}); \
                 total {:.1} -> {:.1} MB (message {:.1} -> {:.1}, delivery {:.1} -> {:.1}, attempt {:.1} -> {:.1})",
                d.message_suffix,
                d.messages_removed,
                d.deliveries_removed,
                d.message_drop_secs,
                d.attempt_suffix,
                d.attempts_removed,
                d.attempt_drop_secs,
                verdict(d.message_drop_secs.max(d.attempt_drop_secs) < DROP_TARGET_SECS),
                d.before.total_mb(),
                d.after.total_mb(),
                d.before.message_mb,
                d.after.message_mb,
                d.before.delivery_mb,
                d.after.delivery_mb,
                d.before.attempt_mb,
                d.after.attempt_mb
            );
            if let Some(r) = &h.removal {
                let _ = writeln!(
                    t,
                    "delete the application: answered in {:.1} ms, removed in the background in \
                     {:.1} s ({} batches: {} messages, {} deliveries, {} attempts), longest Herald \
                     transaction meanwhile {:.0} ms; another application's sends p50/p99 {:.1}/{:.1} ms \
                     before, {:.1}/{:.1} ms during ({} sends)",
                    r.answer_ms,
                    r.removal_secs,
                    r.batches,
                    r.messages,
                    r.deliveries,
                    r.attempts,
                    r.longest_transaction_ms,
                    r.neighbour_before.p50_ms,
                    r.neighbour_before.p99_ms,
                    r.neighbour_during.p50_ms,
                    r.neighbour_during.p99_ms,
                    r.neighbour_sends_during
                );
            }
        }
        if let Some(k) = &s.soak {
            let env: Vec<String> = k.env.iter().map(|(a, b)| format!("{a}={b}")).collect();
            let sizes: Vec<String> = k
                .samples
                .iter()
                .map(|(at, mb)| format!("{at:.0}s:{mb:.0}"))
                .collect();
            let _ = writeln!(
                t,
                "\n{}: {} msg/s for {} s, {}; {} message partitions at the end; database MB \
                 over the second half {:.1}-{:.1} (flat within {SOAK_FLAT_PCT}%: {}); samples {}",
                s.name,
                k.rate,
                k.secs,
                env.join(" "),
                k.partitions_at_end,
                k.second_half_min_mb,
                k.second_half_max_mb,
                verdict(k.flat),
                sizes.join(" ")
            );
        }
    }
}

/// The live-feed subscribers' figures, for the scenarios that had them.
fn sse_table(t: &mut String, report: &Report) {
    let with_sse: Vec<_> = report
        .scenarios
        .iter()
        .filter_map(|s| s.sse.as_ref().map(|f| (s, f)))
        .collect();
    if with_sse.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "\nLive feed: lag = arrival at a subscriber - PostgreSQL's commit timestamp of the attempt's transaction \
         (commit -> arrival; the target); request end -> arrival = arrival - (created_at + duration_ms), an upper bound"
    );
    heading(
        t,
        "| scenario | subscribers | attempt events each | received min-max | missing | lagged frames | \
         commit->arrival p50/p99/max ms | request end->arrival p50/p99/max ms (upper bound) | delivered/s | vs burst | subscribers' CPU s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    );
    let three =
        |l: &crate::stats::Latency| format!("{:.1}/{:.1}/{:.1}", l.p50_ms, l.p99_ms, l.max_ms);
    for (s, f) in &with_sse {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}-{} | {} | {} | {} | {} | {:.0} | {} | {:.1} |",
            s.name,
            f.subscribers,
            f.attempts_expected,
            f.attempts_received_min,
            f.attempts_received_max,
            f.missing,
            f.lagged_frames,
            match (&f.commit_lag, &f.commit_lag_unavailable) {
                (Some(c), _) => three(c),
                (None, Some(_)) => "unavailable".into(),
                (None, None) => "-".into(),
            },
            three(&f.lag),
            s.delivered_per_s,
            f.delivered_change_pct
                .map_or("-".into(), |c| format!("{c:+.1}%")),
            f.subscriber_cpu_s
        );
    }
    for (s, f) in &with_sse {
        let throughput = match (f.delivered_change_pct, f.throughput_target_met) {
            (Some(c), Some(met)) => format!(
                "delivered/s {c:+.1}% against burst (target: a drop under {SSE_DROP_TARGET_PCT}%): {}",
                verdict(met)
            ),
            _ => "delivered/s not compared (the plain burst did not run)".into(),
        };
        let (met, by) = f.lag_verdict();
        let met = match met {
            Some(met) => verdict(met).to_owned(),
            None => "unknown".to_owned(),
        };
        let commit = match (&f.commit_lag, &f.commit_lag_unavailable) {
            (Some(c), _) => format!(
                "p99 commit -> arrival {:.1} ms over {} events of {} transactions",
                c.p99_ms, f.commit_lag_samples, f.commit_lag_transactions
            ),
            (None, Some(why)) => format!("commit -> arrival unavailable: {why}"),
            (None, None) => "commit -> arrival not measured (an older run)".to_owned(),
        };
        let _ = writeln!(
            t,
            "{}: {commit}; p99 request end -> arrival (upper bound) {:.1} ms; \
             target p99 <= {SSE_LAG_P99_TARGET_MS} ms by {by}: {met}; {throughput}",
            s.name, f.lag.p99_ms
        );
        let _ = writeln!(
            t,
            "{}: attempt events missing {} (at {} subscribers), beyond the expected {}; lagged frames {} \
             (at {} subscribers); other events {:.0} per subscriber; unparsed {}; without xid {}; \
             stamped before request end {}, before commit {}; broken streams {}{}",
            s.name,
            f.missing,
            f.subscribers_missing_some,
            f.extra,
            f.lagged_frames,
            f.subscribers_lagged,
            f.other_events_per_subscriber,
            f.unparsed,
            f.attempts_without_xid,
            f.early,
            f.commit_lag_early,
            f.stream_errors,
            f.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `burst sse` result saved before the commit lag existed still loads and prints.
    #[test]
    fn older_sse_results_load() {
        let lat = r#"{"p50_ms":1.0,"p90_ms":2.0,"p99_ms":150.0,"max_ms":200.0}"#;
        let json = format!(
            r#"{{"commit":"abc","when":"2026-11-24T00:00:00Z","ceiling_tps":null,"herald_env":[],
            "scenarios":[{{"name":"burst sse","messages":1000,"fan_out":1,"offered":"x",
            "accepted_per_s":1.0,"delivered_per_s":1.0,"latency":{lat},"duplicates":0,"lost":0,
            "send_errors":0,"peak_rss_mb":1.0,"cpu_seconds":{{"herald":0,"postgres":0,"bench":0}},
            "notes":{{}},"sse":{{"subscribers":2,"stream":"/s","connect_secs":0.1,
            "attempts_expected":5,"attempts_received_min":5,"attempts_received_max":5,
            "missing":0,"subscribers_missing_some":0,"extra":0,"lagged_frames":0,
            "subscribers_lagged":0,"other_events_per_subscriber":5.0,"unparsed":0,"early":0,
            "stream_errors":0,"first_error":null,"lag":{lat},"lag_samples":10,
            "baseline_delivered_per_s":null,"delivered_change_pct":null,
            "subscriber_cpu_s":0.1,"lag_target_met":false,"throughput_target_met":null}}}}]}}"#
        );
        let report: Report = serde_json::from_str(&json).unwrap();
        let sse = report.scenarios[0].sse.as_ref().unwrap();
        assert!(sse.commit_lag.is_none() && sse.commit_lag_unavailable.is_none());
        assert_eq!(sse.lag_target_met, Some(false));
        // Judged again from the figures: the upper bound alone cannot say.
        assert_eq!(sse.lag_verdict().0, None);
        let t = table(&report);
        assert!(t.contains("| - | 1.0/150.0/200.0 |"), "{t}");
        assert!(t.contains("commit -> arrival not measured"), "{t}");
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use crate::results::{HistoryResult, ScenarioResult, SoakResult};
    use crate::stats::Latency;

    pub(super) fn scenario(name: &str) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            messages: 10,
            fan_out: 1,
            offered: "x".into(),
            accepted_per_s: 900.0,
            delivered_per_s: 900.0,
            latency: Latency::default(),
            duplicates: 0,
            lost: 0,
            send_errors: 0,
            peak_rss_mb: 1.0,
            cpu_seconds: Default::default(),
            notes: serde_json::json!({}),
            sse: None,
            history: None,
            soak: None,
            validation: None,
        }
    }

    /// The history's figures and verdicts print, and survive a trip through the JSON.
    #[test]
    fn history_and_soak_print() {
        let mut burst = scenario("history burst");
        let view = |name: &str, p99_ms: f64| {
            serde_json::json!({"name": name, "path": "/", "requests": 30, "first_ms": 1.0,
                "latency": {"p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": p99_ms, "max_ms": p99_ms},
                "failures": 0, "failure": null})
        };
        let sizes = serde_json::json!({"message_mb": 10.0, "delivery_mb": 5.0, "attempt_mb": 5.0});
        let history: HistoryResult = serde_json::from_value(serde_json::json!({
            "partition_interval": "4m", "messages": 100, "partitions": 34, "load_secs": 1.0,
            "vacuum_analyze_secs": 0.5, "sizes": sizes, "baseline_delivered_per_s": 1000.0,
            "burst_ratio_pct": 90.0, "views": [view("overview", 2700.0), view("stats", 5.0)],
            "drop": {"message_suffix": "p1", "attempt_suffix": "p1", "messages_removed": 3,
                     "deliveries_removed": 3, "attempts_removed": 3, "before": sizes,
                     "after": sizes, "message_drop_secs": 0.01, "attempt_drop_secs": 1.5,
                     "message_said": "dropped", "attempt_said": "dropped"}
        }))
        .unwrap();
        burst.history = Some(history);
        let mut soak = scenario("history soak");
        soak.soak = Some(SoakResult {
            env: vec![("HERALD_RETENTION".into(), "2m".into())],
            rate: 200.0,
            secs: 360,
            samples: vec![(0.0, 10.0), (200.0, 50.0)],
            second_half_min_mb: 50.0,
            second_half_max_mb: 50.0,
            flat: true,
            partitions_at_end: 12,
        });
        let report = Report {
            commit: "abc".into(),
            when: "now".into(),
            ceiling_tps: None,
            herald_env: vec![],
            scenarios: vec![burst, soak],
        };
        let report: Report =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let t = table(&report);
        assert!(
            t.contains("90.0% of the empty-database burst's 1000 (target >= 90%): met"),
            "{t}"
        );
        assert!(
            t.contains("| overview | / | 1.0 | 1.0 | 2700.0 | 2700.0 | 0 | NOT met |"),
            "{t}"
        );
        assert!(
            t.contains("| stats | / | 1.0 | 1.0 | 5.0 | 5.0 | 0 | met |"),
            "{t}"
        );
        assert!(t.contains("in 1.500 s (target < 1 s: NOT met)"), "{t}");
        assert!(t.contains("50.0-50.0 (flat within 15%: met)"), "{t}");
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use crate::results::{ScenarioResult, ValidationRound};

    fn round(round: usize, validated: bool, delivered_per_s: f64, refused: u16) -> ScenarioResult {
        let mut s = history_tests::scenario(if validated {
            "burst validated"
        } else {
            "burst unvalidated"
        });
        s.delivered_per_s = delivered_per_s;
        s.validation = Some(ValidationRound {
            round,
            validated,
            event_type: "t".into(),
            payload_bytes: 256,
            herald_cpu_ms_per_delivery: if validated { 0.22 } else { 0.2 },
            postgres_cpu_ms_per_delivery: 0.5,
            refused_payload_status: refused,
            bad_format_status: validated.then_some(202),
            check_us: validated.then_some(4.0),
            check_parse_us: validated.then_some(1.5),
        });
        s
    }

    fn report(scenarios: Vec<ScenarioResult>) -> Report {
        let report = Report {
            commit: "abc".into(),
            when: "now".into(),
            ceiling_tps: None,
            herald_env: vec![],
            scenarios,
        };
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap()
    }

    /// Medians per side (the mean of two), the cost against the target, and a round
    /// that did not validate as its name says spoils the verdict.
    #[test]
    fn the_pair_is_judged_by_its_medians() {
        let r = report(vec![
            round(1, false, 2000.0, 202),
            round(1, true, 1900.0, 422),
            round(2, true, 1700.0, 422),
            round(2, false, 1800.0, 202),
        ]);
        let ab = ValidationAb::of(&r.scenarios).unwrap();
        assert_eq!(ab.delivered_per_s, (1900.0, 1800.0));
        assert_eq!(ab.round_ratios, [0.95, 0.944]);
        assert_eq!(ab.cost_pct, 5.3);
        assert!(ab.sound && ab.target_met());
        let t = table(&r);
        assert!(
            t.contains("by round: 0.950, 0.944, median 0.947 (mean 0.947, standard error 0.003)"),
            "{t}"
        );
        assert!(t.contains("herald 1.100, PostgreSQL 1.000"), "{t}");
        assert!(t.contains("(target: at most 10%): met"), "{t}");
        assert!(
            t.contains("herald CPU ms/delivery 0.200 -> 0.220 (+10.0%)"),
            "{t}"
        );

        let r = report(vec![
            round(1, false, 2000.0, 202),
            round(1, true, 1700.0, 202),
        ]);
        let ab = ValidationAb::of(&r.scenarios).unwrap();
        assert!(!ab.sound && !ab.target_met());
        let t = table(&r);
        assert!(t.contains("| 202 (WRONG) |"), "{t}");
        assert!(t.contains("NOT met; but a round"), "{t}");
        assert!(ValidationAb::of(&r.scenarios[..1]).is_none());
    }
}
