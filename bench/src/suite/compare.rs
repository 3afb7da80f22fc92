//! `--baseline`: this build against another commit's, in one run. The machine drifts by 2×
//! from hour to hour, so the two binaries take turns on the same cluster: the selected
//! scenarios run with one, then with the other, the order swapped every round, each run on
//! a fresh database. The comparison is of medians over the rounds, per scenario: delivered/s
//! and CPU per delivery, herald's and PostgreSQL's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Settings, now_rfc3339, run};
use crate::results::Report;

/// Which binary a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Baseline,
    Current,
}

/// One run of the selected scenarios with one binary.
#[derive(Debug, Serialize, Deserialize)]
pub struct SideRun {
    pub round: usize,
    pub side: Side,
    pub report: Report,
}

/// One scenario's figures on both sides: medians over the rounds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScenarioComparison {
    pub name: String,
    pub baseline_delivered_per_s: f64,
    pub current_delivered_per_s: f64,
    /// Median over the rounds of each round's current / baseline: the drift between rounds
    /// cancels out of it.
    pub delivered_ratio: f64,
    pub baseline_cpu_ms_per_delivery: CpuPerDelivery,
    pub current_cpu_ms_per_delivery: CpuPerDelivery,
    /// Lost and duplicated deliveries, both sides and every round together.
    pub lost: usize,
    pub duplicates: u64,
}

/// CPU milliseconds per delivery, by process (from CPU seconds read to 0.01 s).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CpuPerDelivery {
    pub herald: f64,
    pub postgres: f64,
}

impl CpuPerDelivery {
    pub fn total(&self) -> f64 {
        self.herald + self.postgres
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub when: String,
    pub current: String,
    pub baseline: String,
    pub rounds: usize,
    pub ceiling_tps: Option<f64>,
    pub scenarios: Vec<ScenarioComparison>,
    pub runs: Vec<SideRun>,
}

/// Runs the selected scenarios `rounds` times with each binary, alternating, and compares.
/// The ceiling (if asked for) is measured once, in the first run.
pub async fn compare(
    mut settings: Settings,
    baseline_bin: PathBuf,
    baseline: String,
    current_name: Option<String>,
    rounds: usize,
) -> anyhow::Result<Comparison> {
    let current_bin = settings.herald_bin.clone();
    let mut runs = Vec::new();
    let mut ceiling_tps = None;
    for round in 1..=rounds.max(1) {
        let order = if round % 2 == 1 {
            [Side::Baseline, Side::Current]
        } else {
            [Side::Current, Side::Baseline]
        };
        for side in order {
            settings.herald_bin = match side {
                Side::Baseline => baseline_bin.clone(),
                Side::Current => current_bin.clone(),
            };
            eprintln!(
                "round {round}: {side:?} ({})",
                settings.herald_bin.display()
            );
            let mut report = run(&settings).await?;
            if let Some(tps) = report.ceiling_tps {
                ceiling_tps = Some(tps);
                settings.ceiling_secs = 0;
            }
            match (side, &current_name) {
                (Side::Baseline, _) => report.commit = baseline.clone(),
                (Side::Current, Some(name)) => report.commit = name.clone(),
                (Side::Current, None) => {}
            }
            runs.push(SideRun {
                round,
                side,
                report,
            });
        }
    }
    let current = runs
        .iter()
        .find(|r| r.side == Side::Current)
        .map(|r| r.report.commit.clone())
        .unwrap_or_default();
    Ok(Comparison {
        when: now_rfc3339(),
        current,
        baseline,
        rounds: rounds.max(1),
        ceiling_tps,
        scenarios: summarise(&runs),
        runs,
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// Per scenario (in the order of the first run), the medians of both sides.
pub fn summarise(runs: &[SideRun]) -> Vec<ScenarioComparison> {
    let Some(first) = runs.first() else {
        return vec![];
    };
    let names: Vec<&str> = first
        .report
        .scenarios
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut out = Vec::new();
    for name in names {
        // (round, side, delivered/s, cpu per delivery)
        let mut points = vec![];
        let (mut lost, mut duplicates) = (0, 0);
        for r in runs {
            // The validation pair repeats its names: each occurrence is one point.
            for s in r.report.scenarios.iter().filter(|s| s.name == name) {
                let deliveries = (s.messages * s.fan_out.max(1)) as f64;
                let per = |secs: f64| 1000.0 * secs / deliveries.max(1.0);
                points.push((
                    r.round,
                    r.side,
                    s.delivered_per_s,
                    CpuPerDelivery {
                        herald: per(s.cpu_seconds.herald),
                        postgres: per(s.cpu_seconds.postgres),
                    },
                ));
                lost += s.lost;
                duplicates += s.duplicates;
            }
        }
        let side = |want: Side| points.iter().filter(move |p| p.1 == want);
        let cpu = |want: Side| CpuPerDelivery {
            herald: median(side(want).map(|p| p.3.herald).collect()),
            postgres: median(side(want).map(|p| p.3.postgres).collect()),
        };
        let ratios: Vec<f64> = (1..=runs.iter().map(|r| r.round).max().unwrap_or(1))
            .filter_map(|round| {
                let of = |want: Side| {
                    median(
                        points
                            .iter()
                            .filter(|p| p.0 == round && p.1 == want)
                            .map(|p| p.2)
                            .collect(),
                    )
                };
                let (b, c) = (of(Side::Baseline), of(Side::Current));
                (b > 0.0 && c.is_finite()).then(|| c / b)
            })
            .collect();
        out.push(ScenarioComparison {
            name: name.to_owned(),
            baseline_delivered_per_s: median(side(Side::Baseline).map(|p| p.2).collect()),
            current_delivered_per_s: median(side(Side::Current).map(|p| p.2).collect()),
            delivered_ratio: median(ratios),
            baseline_cpu_ms_per_delivery: cpu(Side::Baseline),
            current_cpu_ms_per_delivery: cpu(Side::Current),
            lost,
            duplicates,
        });
    }
    out
}

/// The comparison as a Markdown table.
pub fn table(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Herald {} against {} at {}: {} round(s) each, alternating; medians",
        c.current, c.baseline, c.when, c.rounds
    );
    let _ = writeln!(
        t,
        "| scenario | delivered/s {b} | delivered/s {cur} | ratio (median of rounds) | CPU ms/delivery {b} herald/pg/total | CPU ms/delivery {cur} herald/pg/total | lost | dup |",
        b = c.baseline,
        cur = c.current
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---|---|---:|---:|");
    for s in &c.scenarios {
        let cpu =
            |x: &CpuPerDelivery| format!("{:.3}/{:.3}/{:.3}", x.herald, x.postgres, x.total());
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.3} | {} | {} | {} | {} |",
            s.name,
            s.baseline_delivered_per_s,
            s.current_delivered_per_s,
            s.delivered_ratio,
            cpu(&s.baseline_cpu_ms_per_delivery),
            cpu(&s.current_cpu_ms_per_delivery),
            s.lost,
            s.duplicates
        );
    }
    t
}

/// Writes the comparison as `<when>-<current>-vs-<baseline>.json` and
/// `latest-comparison.json` in `out`.
pub fn write(c: &Comparison, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(c)?;
    let named = out.join(format!(
        "{}-{}-vs-{}.json",
        c.when.replace(':', ""),
        c.current,
        c.baseline
    ));
    std::fs::write(&named, &json)?;
    std::fs::write(out.join("latest-comparison.json"), &json)?;
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{CpuSeconds, ScenarioResult};

    fn report(delivered: f64, herald: f64, postgres: f64) -> Report {
        let s: ScenarioResult = serde_json::from_value(serde_json::json!({
            "name": "burst", "messages": 10000, "fan_out": 1, "offered": "64 senders",
            "accepted_per_s": delivered, "delivered_per_s": delivered,
            "latency": {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0},
            "duplicates": 0, "lost": 0, "send_errors": 0, "peak_rss_mb": 0.0,
            "cpu_seconds": CpuSeconds { herald, postgres, bench: 0.0 }, "notes": {}
        }))
        .unwrap();
        Report {
            commit: "x".into(),
            when: String::new(),
            ceiling_tps: None,
            herald_env: vec![],
            scenarios: vec![s],
        }
    }

    #[test]
    fn the_ratio_is_the_median_of_each_rounds_ratio() {
        // The machine slows down by half in round 2: both sides alike.
        let runs = vec![
            SideRun {
                round: 1,
                side: Side::Baseline,
                report: report(1000.0, 2.0, 10.0),
            },
            SideRun {
                round: 1,
                side: Side::Current,
                report: report(2000.0, 1.0, 4.0),
            },
            SideRun {
                round: 2,
                side: Side::Current,
                report: report(1000.0, 1.0, 4.0),
            },
            SideRun {
                round: 2,
                side: Side::Baseline,
                report: report(500.0, 2.0, 10.0),
            },
        ];
        let s = &summarise(&runs)[0];
        assert_eq!(s.delivered_ratio, 2.0);
        assert_eq!(s.baseline_delivered_per_s, 750.0);
        assert!((s.current_cpu_ms_per_delivery.postgres - 0.4).abs() < 1e-9);
        assert!((s.baseline_cpu_ms_per_delivery.total() - 1.2).abs() < 1e-9);
    }
}
