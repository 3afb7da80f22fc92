//! The operator views of `history burst`, timed on the history.

use std::time::Instant;

use anyhow::Context;

use crate::process::TOKEN;
use crate::results::ViewTiming;
use crate::stats::{Latency, round};
use crate::suite::Run;

/// Sequential requests timed per view (after one more, untimed, reported apart).
const VIEW_REQUESTS: usize = 30;

impl Run {
    /// Every operator view of issue 14's point 6, each requested [`VIEW_REQUESTS`] times
    /// in a row after one untimed request: the dashboard's pages with a session cookie
    /// from `POST /login`, the API with the admin token.
    pub(super) async fn views(&self, app: &str, ep: &str) -> anyhow::Result<Vec<ViewTiming>> {
        let base = &self.api.base;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let login = http
            .post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await?;
        anyhow::ensure!(
            login.status().as_u16() == 303,
            "POST /login answered {}",
            login.status()
        );
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .context("POST /login set no cookie")?
            .to_owned();
        // Paths as the routes spell them; {app} and {ep} are the history's.
        let views = [
            ("overview", "/"),
            ("application page", "/apps/{app}"),
            ("endpoint page", "/apps/{app}/endpoints/{ep}"),
            ("dead letters", "/dead"),
            ("stats", "/api/v1/stats"),
            ("metrics", "/metrics"),
            ("messages", "/api/v1/apps/{app}/messages"),
            (
                "messages by event type",
                "/api/v1/apps/{app}/messages?event_type=history.1",
            ),
            (
                "endpoint attempts",
                "/api/v1/apps/{app}/endpoints/{ep}/attempts",
            ),
        ];
        let mut out = Vec::new();
        for (name, route) in views {
            let path = route.replace("{app}", app).replace("{ep}", ep);
            let mut times = Vec::with_capacity(VIEW_REQUESTS + 1);
            let (mut failures, mut failure) = (0, None);
            for _ in 0..=VIEW_REQUESTS {
                let started = Instant::now();
                let request = http.get(format!("{base}{path}"));
                let request = if path.starts_with("/api/") {
                    request.bearer_auth(&self.api.token)
                } else {
                    request.header("cookie", &cookie)
                };
                let answer = request.send().await;
                let status = match answer {
                    Ok(r) => {
                        let status = r.status();
                        r.bytes().await.map(|_| status).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                times.push(started.elapsed());
                match status {
                    Ok(s) if s.is_success() => {}
                    other => {
                        failures += 1;
                        failure.get_or_insert_with(|| match other {
                            Ok(s) => s.to_string(),
                            Err(e) => e,
                        });
                    }
                }
            }
            let first = times.remove(0);
            let timing = ViewTiming {
                name: name.to_owned(),
                path: route.to_owned(),
                requests: VIEW_REQUESTS,
                first_ms: round(first.as_secs_f64() * 1000.0),
                latency: Latency::of(&mut times),
                failures,
                failure,
            };
            eprintln!(
                "history: {} {}: p50 {:.1} ms, p99 {:.1} ms",
                timing.name, timing.path, timing.latency.p50_ms, timing.latency.p99_ms
            );
            out.push(timing);
        }
        Ok(out)
    }
}
