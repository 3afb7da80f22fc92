//! The load driver: sends messages through Herald's public REST API only, closed-loop
//! (a fixed number of concurrent senders) or open-loop (a fixed offered rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

/// A Herald API to send to.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .tcp_nodelay(true)
                .build()
                .expect("client"),
        }
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
        Ok(body)
    }

    /// `method path` (with `body`, if any): the status and the JSON answer (`null` if it
    /// had none), whatever the status.
    pub async fn status(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    /// Deletes an application or endpoint and waits until its removal (which runs in the
    /// background) is done, so that it does not weigh on what is measured next.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let removal = self.queue_removal(path).await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.removal_done(&removal).await?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{path}: removal {removal} not done after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// `method path` without a body; its JSON answer, an error unless it succeeded.
    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// `DELETE path`: the id of the removal it queued.
    pub async fn queue_removal(&self, path: &str) -> anyhow::Result<String> {
        let removal = self.call(reqwest::Method::DELETE, path).await?;
        removal["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{path}: no removal in {removal}"))
    }

    /// The removal once it is done.
    pub async fn removal_done(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let now = self
            .call(reqwest::Method::GET, &format!("/removals/{id}"))
            .await?;
        Ok((now["state"] == "done").then_some(now))
    }

    /// Creates an application with one endpoint per URL; returns (app id, secrets).
    pub async fn app_with_endpoints(
        &self,
        name: &str,
        urls: &[String],
    ) -> anyhow::Result<(String, Vec<String>)> {
        let app = self.post("/apps", json!({"name": name})).await?;
        let app_id = app["id"].as_str().unwrap_or_default().to_owned();
        let mut secrets = Vec::new();
        for url in urls {
            let ep = self
                .post(&format!("/apps/{app_id}/endpoints"), json!({"url": url}))
                .await?;
            secrets.push(ep["secret"].as_str().unwrap_or_default().to_owned());
        }
        Ok((app_id, secrets))
    }
}

#[derive(Clone, Debug)]
pub struct Load {
    pub count: usize,
    /// Closed loop: this many senders, each sending as soon as its previous send returned.
    pub concurrency: usize,
    /// Open loop: offer this many messages per second instead (concurrency then only
    /// bounds the sends outstanding at once).
    pub rate: Option<f64>,
    pub payload_bytes: usize,
    /// What each message is.
    pub message: Message,
}

/// A message's event type, and how its payload of about `payload_bytes` is made from its
/// number in the load.
#[derive(Clone, Copy, Debug)]
pub struct Message {
    pub event_type: &'static str,
    pub payload: fn(n: usize, bytes: usize) -> serde_json::Value,
}

impl Message {
    /// `bench.event`, `{"n": n, "data": {"filler": "xx…"}}`: what every scenario sends but
    /// the validation pair (and what `history burst` loads through SQL).
    pub const FILLER: Message = Message {
        event_type: "bench.event",
        payload: filler,
    };
}

fn filler(n: usize, bytes: usize) -> serde_json::Value {
    json!({"n": n, "data": {"filler": "x".repeat(bytes.saturating_sub(14))}})
}

/// One accepted message: its id and when the 202 arrived.
pub type Accepted = (String, Instant);

pub struct Outcome {
    pub accepted: Vec<Accepted>,
    pub errors: u64,
    pub started: Instant,
    pub finished: Instant,
}

pub async fn drive(api: &Api, app_id: &str, load: &Load) -> Outcome {
    let message = load.message;
    let payload_bytes = load.payload_bytes;
    let path = Arc::new(format!("{}/api/v1/apps/{app_id}/messages", api.base));
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(load.count)));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let send = {
        let api = api.clone();
        let accepted = accepted.clone();
        let errors = errors.clone();
        let path = path.clone();
        move |n: usize| {
            let api = api.clone();
            let accepted = accepted.clone();
            let errors = errors.clone();
            let path = path.clone();
            let body = json!({
                "event_type": message.event_type,
                "payload": (message.payload)(n, payload_bytes),
            });
            async move {
                let sent = api
                    .http
                    .post(path.as_str())
                    .bearer_auth(&api.token)
                    .json(&body)
                    .send()
                    .await;
                let at = Instant::now();
                let id = match sent {
                    Ok(r) if r.status().as_u16() == 202 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|m| m["id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                match id {
                    Some(id) => accepted.lock().await.push((id, at)),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };

    match load.rate {
        None => {
            let mut senders = Vec::new();
            for _ in 0..load.concurrency {
                let send = send.clone();
                let next = next.clone();
                let count = load.count;
                senders.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count {
                            break;
                        }
                        send(n).await;
                    }
                }));
            }
            for s in senders {
                let _ = s.await;
            }
        }
        Some(rate) => {
            // Ticks of 10 ms, each releasing the sends that are due by then.
            let outstanding = Arc::new(Semaphore::new(load.concurrency));
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            let mut issued = 0usize;
            while issued < load.count {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(load.count);
                while issued < due {
                    let permit = outstanding.clone().acquire_owned().await.expect("open");
                    let send = send.clone();
                    let n = issued;
                    tasks.spawn(async move {
                        send(n).await;
                        drop(permit);
                    });
                    issued += 1;
                }
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let finished = Instant::now();
    let accepted = std::mem::take(&mut *accepted.lock().await);
    Outcome {
        accepted,
        errors: errors.load(Ordering::Relaxed),
        started,
        finished,
    }
}
