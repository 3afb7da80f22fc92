//! The SVG chart of latency against offered load (`latency.svg`).

use std::fmt::Write;

use crate::results::Report;

/// Latency percentiles (log scale) against the load each scenario offered, as accepted
/// messages per second.
pub fn svg(report: &Report) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 170.0, 40.0, 60.0);
    // (load, label, percentiles, on the line): lines join the one-endpoint scenarios, the
    // others are points of their own (fan-out sends ten deliveries per accepted message).
    // The validation pair's rounds sit at the burst's load, several of them: left out.
    let mut points: Vec<(f64, String, [f64; 3], bool)> = report
        .scenarios
        .iter()
        .filter(|s| s.validation.is_none())
        .map(|s| {
            // The burst with SSE subscribers sits at the burst's load: a point of its own,
            // as do the history's scenarios (another database, another configuration).
            let single =
                s.fan_out == 1 && s.sse.is_none() && s.history.is_none() && s.soak.is_none();
            let label = if s.fan_out == 1 {
                s.name.to_owned()
            } else {
                format!("{} ({}x)", s.name, s.fan_out)
            };
            (
                s.accepted_per_s.max(1.0),
                label,
                [s.latency.p50_ms, s.latency.p90_ms, s.latency.p99_ms],
                single,
            )
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let max_y = points.iter().flat_map(|p| p.2).fold(1.0, f64::max).max(1.0);
    let (min_log, max_log) = (-1.0f64, max_y.log10().ceil().max(1.0));
    let x = |v: f64| left + (w - left - right) * v / max_x;
    let y = |ms: f64| {
        let l = ms.max(0.1).log10().clamp(min_log, max_log);
        h - bottom - (h - top - bottom) * (l - min_log) / (max_log - min_log)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">Herald {}: delivery latency (202 → arrival) against offered load</text>"#,
        report.commit
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="36" font-size="10" fill="#555">log scale; values under 0.1 ms (webhooks that beat the 202) are drawn at 0.1 ms</text>"##
    );
    // Axes, grid and labels.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let mut decade = min_log as i32;
    while decade <= max_log as i32 {
        let v = 10f64.powi(decade);
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v} ms</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0
        );
        decade += 1;
    }
    for i in 0..=4 {
        let v = max_x * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(v),
            h - bottom + 18.0,
            v
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered load: accepted messages per second</text>"#,
        left + (w - left - right) / 2.0,
        h - 15.0
    );
    let colours = ["#2b8a3e", "#e67700", "#c92a2a"];
    for (i, (label, colour)) in ["p50", "p90", "p99"].iter().zip(colours).enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.3)
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.2[i])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(p.0),
                y(p.2[i])
            );
        }
        let ly = top + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"#,
            w - right + 15.0,
            w - right + 35.0,
            w - right + 40.0,
            ly + 4.0
        );
    }
    for (n, p) in points.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            x(p.0),
            y(p.2[2]) - 8.0 - 10.0 * (n % 2) as f64,
            p.1
        );
    }
    s.push_str("</svg>\n");
    s
}
