//! Failed tokens are throttled per client address, and logged without the token.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;

use crate::helpers::{TOKEN, fresh_database};
use crate::process::Process;

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is this machine).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// `GET url` with `token` as bearer.
async fn get_with(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    client.get(url).bearer_auth(token).send().await.unwrap()
}

/// The login form posted with `token`.
async fn log_in(client: &reqwest::Client, login: &str, token: &str) -> reqwest::Response {
    client
        .post(login)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_tokens_are_throttled_per_address_and_logged_without_the_token() {
    let db_url = fresh_database().await;
    let mut p = Process::start(
        &db_url,
        &[
            ("HERALD_AUTH_FAILURE_LIMIT", "3"),
            ("HERALD_AUTH_FAILURE_WINDOW", "1m"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let apps = format!("http://{}/api/v1/apps", p.addr);
    let login = format!("http://{}/login", p.addr);
    let guesses = [
        "guess-one-0123456789abcdef",
        "guess-two-0123456789abcdef",
        "guess-three-0123456789abcdef",
    ];

    let attacker = client_from("127.0.0.1");
    // Before the limit, the right token from the same address works as always.
    let r = get_with(&attacker, &apps, TOKEN).await;
    assert_eq!(r.status(), StatusCode::OK);
    for guess in guesses {
        let r = get_with(&attacker, &apps, guess).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{guess}");
    }
    // Past it, nothing from that address is checked: a wrong token, the right one, a login.
    for token in ["guess-four-0123456789abcdef", TOKEN] {
        let r = get_with(&attacker, &apps, token).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "too_many_requests", "{body}");
    }
    let r = log_in(&attacker, &login, TOKEN).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Too many wrong tokens"));

    // Another address is not affected: its right token works.
    let sender = client_from("127.0.0.2");
    let r = get_with(&sender, &apps, TOKEN).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Wrong logins count the same way, per address.
    let guesser = client_from("127.0.0.3");
    for guess in guesses {
        let r = log_in(&guesser, &login, guess).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = log_in(&guesser, &login, TOKEN).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = get_with(&guesser, &apps, TOKEN).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = log_in(&sender, &login, TOKEN).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    p.signal("-TERM");
    p.wait_exit(Duration::from_secs(10)).await;
    let logs = p.logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(failures.len(), 6, "{logs}");
    assert!(failures.iter().all(|l| l.contains("WARN")), "{logs}");
    assert_eq!(
        failures.iter().filter(|l| l.contains("127.0.0.1")).count(),
        3
    );
    assert_eq!(
        failures.iter().filter(|l| l.contains("127.0.0.3")).count(),
        3
    );
    for secret in guesses.iter().chain([&"guess-four", &TOKEN]) {
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }
}
