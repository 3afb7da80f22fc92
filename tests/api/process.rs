//! The real `herald serve` binary as a child process, for what only a process can show:
//! signals, kill -9, its log output, and several processes sharing one database.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TOKEN, base_env};

/// The real `herald serve` binary, for what only a process can show: signals, kill -9
/// and its log output.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// One client for every call: building one per request costs tens of milliseconds.
    http: reqwest::Client,
}

impl Process {
    pub async fn start(db_url: &str, overrides: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::env::temp_dir().join(format!("herald-{}.log", uuid::Uuid::now_v7()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        // A clean environment and a working directory without a developer's .env.
        cmd.arg("serve")
            .env_clear()
            .current_dir(std::env::temp_dir())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(base_env())
            .env("DATABASE_URL", db_url)
            .env("HERALD_LISTEN", addr.to_string())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("herald binary starts");
        let process = Self {
            child,
            addr,
            log,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
                && r.status().is_success()
            {
                return process;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not start: {}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the process to exit by itself; returns whether it exited cleanly.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets up an application and one endpoint at `url` through this process's API;
    /// returns (application id, endpoint id, signing secret).
    pub async fn app_with_endpoint(&self, url: &str) -> (String, String, String) {
        let app = self
            .api(reqwest::Method::POST, "/apps", json!({"name": "Acme"}))
            .await;
        let app_id = app["id"].as_str().unwrap().to_owned();
        let ep = self.add_endpoint(&app_id, url).await;
        (
            app_id,
            ep["id"].as_str().unwrap().to_owned(),
            ep["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Adds an endpoint at `url` to an application; returns the endpoint.
    pub async fn add_endpoint(&self, app_id: &str, url: &str) -> Value {
        self.api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/endpoints"),
            json!({"url": url}),
        )
        .await
    }

    /// Sends a message through this process's API; returns the message.
    pub async fn send(&self, app_id: &str, event_type: &str, payload: Value) -> Value {
        self.api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": event_type, "payload": payload}),
        )
        .await
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.http
            .request(method, format!("http://{}/api/v1{path}", self.addr))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
