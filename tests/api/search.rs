//! The message list searched by event type, time window and idempotency key, the attempt
//! lists by outcome and status, page after page, and the dashboard's forms that do the
//! same.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::dashboard::Browser;
use crate::helpers::{Receiver, Reply, TestServer, spawn_app};

const WAIT: Duration = Duration::from_secs(10);

type Filters<'a> = Vec<(&'a str, &'a str)>;

fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Every page of `path?filters`, `limit` at a time, newest first; asserts each page but
/// the last is full.
async fn all_pages(
    app: &TestServer,
    path: &str,
    filters: &[(&str, &str)],
    limit: usize,
) -> Vec<Value> {
    let mut items = vec![];
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut pairs = filters.to_vec();
        let limit_text = limit.to_string();
        pairs.push(("limit", &limit_text));
        if let Some(c) = &cursor {
            pairs.push(("cursor", c));
        }
        let (status, page) = app.get(&format!("{path}?{}", query(&pairs))).await;
        assert_eq!(status, StatusCode::OK, "{path} {filters:?}: {page}");
        let data = page["data"].as_array().unwrap();
        items.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(data.len(), limit, "only the last page may be short");
                cursor = Some(c.to_owned());
            }
            None => return items,
        }
    }
    panic!("more than 100 pages")
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn send_keyed(app: &TestServer, app_id: &str, event_type: &str, key: Option<&str>) -> Value {
    let mut body = json!({"event_type": event_type, "payload": {}});
    if let Some(k) = key {
        body["idempotency_key"] = json!(k);
    }
    let (status, msg) = app.post(&format!("/apps/{app_id}/messages"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    msg
}

#[tokio::test]
async fn messages_are_found_by_event_type_time_window_and_idempotency_key_page_by_page() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let b = app.create_app().await;
    // Three generations of messages, a little time apart.
    let mut generations: Vec<Vec<Value>> = vec![];
    for generation in 0..3 {
        let mut sent = vec![];
        for (i, event_type) in [
            "invoice.paid",
            "user.created",
            "invoice.paid",
            "user.created",
            "invoice.paid",
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("key-{generation}-{i}");
            sent.push(send_keyed(&app, &a, event_type, Some(&key)).await);
            // The other application has the same types and keys: never shown for `a`.
            send_keyed(&app, &b, event_type, Some(&key)).await;
        }
        generations.push(sent);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let path = format!("/apps/{a}/messages");
    let everything = all_pages(&app, &path, &[], 250).await;
    assert_eq!(everything.len(), 15);
    let expect = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        ids(&everything
            .iter()
            .filter(|m| keep(m))
            .cloned()
            .collect::<Vec<_>>())
    };

    let paid = all_pages(&app, &path, &[("event_type", "invoice.paid")], 2).await;
    assert_eq!(ids(&paid), expect(&|m| m["event_type"] == "invoice.paid"));
    assert_eq!(paid.len(), 9);

    // The middle generation: from its first message's time to the last one's.
    let since = generations[1][0]["created_at"].as_str().unwrap().to_owned();
    let until = generations[2][0]["created_at"].as_str().unwrap().to_owned();
    let middle: BTreeSet<String> = ids(&generations[1]).into_iter().collect();
    let window = all_pages(&app, &path, &[("since", &since), ("until", &until)], 2).await;
    assert_eq!(
        ids(&window),
        expect(&|m| middle.contains(m["id"].as_str().unwrap()))
    );
    assert_eq!(window.len(), 5);
    let from_middle = all_pages(&app, &path, &[("since", &since)], 4).await;
    assert_eq!(from_middle.len(), 10);
    let before_last = all_pages(&app, &path, &[("until", &until)], 4).await;
    assert_eq!(before_last.len(), 10);

    let paid_in_window = all_pages(
        &app,
        &path,
        &[
            ("event_type", "invoice.paid"),
            ("since", &since),
            ("until", &until),
        ],
        2,
    )
    .await;
    assert_eq!(
        ids(&paid_in_window),
        expect(&|m| m["event_type"] == "invoice.paid" && middle.contains(m["id"].as_str().unwrap()))
    );
    assert_eq!(paid_in_window.len(), 3);

    let keyed = all_pages(&app, &path, &[("idempotency_key", "key-1-3")], 2).await;
    assert_eq!(
        ids(&keyed),
        vec![generations[1][3]["id"].as_str().unwrap().to_owned()]
    );
    let keyed_and_typed = all_pages(
        &app,
        &path,
        &[
            ("idempotency_key", "key-1-3"),
            ("event_type", "user.created"),
        ],
        2,
    )
    .await;
    assert_eq!(ids(&keyed_and_typed), ids(&keyed));
    let key_of_another_type = all_pages(
        &app,
        &path,
        &[
            ("idempotency_key", "key-1-3"),
            ("event_type", "invoice.paid"),
        ],
        2,
    )
    .await;
    assert!(key_of_another_type.is_empty());

    // A window that ends before it starts is empty, not an error.
    let backwards = all_pages(&app, &path, &[("since", &until), ("until", &since)], 2).await;
    assert!(backwards.is_empty());

    // Nothing of `b` ever shows for `a`, whatever the filter.
    let of_b: BTreeSet<String> =
        ids(&all_pages(&app, &format!("/apps/{b}/messages"), &[], 250).await)
            .into_iter()
            .collect();
    assert_eq!(of_b.len(), 15);
    for shown in [&everything, &paid, &window, &keyed] {
        assert!(ids(shown).iter().all(|id| !of_b.contains(id)));
    }
}

#[tokio::test]
async fn bad_filter_values_are_refused_with_422() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (a, ep, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&a, "invoice.paid", json!({})).await;
    let long = "k".repeat(257);
    let messages = format!("/apps/{a}/messages");
    let endpoint_attempts = format!("/apps/{a}/endpoints/{ep}/attempts");
    let message_attempts = format!("/apps/{a}/messages/{msg}/attempts");
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            &messages,
            vec![
                ("event_type", "invoice.*"),
                ("event_type", ""),
                ("event_type", "a b"),
                ("since", "yesterday"),
                ("since", ""),
                ("until", "2026-13-01T00:00:00Z"),
                ("until", "2026-11-24T08:00:00"),
                ("idempotency_key", ""),
                ("idempotency_key", &long),
            ],
        ),
        (
            &endpoint_attempts,
            vec![
                ("outcome", "failed"),
                ("outcome", ""),
                ("status", "600"),
                ("status", "6xx"),
                ("status", "5x"),
                ("status", "abc"),
                ("status", ""),
            ],
        ),
        (
            &message_attempts,
            vec![("status", "99"), ("outcome", "SUCCEEDED")],
        ),
    ];
    for (path, refused) in cases {
        for pair in refused {
            let filters = vec![pair];
            let (status, body) = app.get(&format!("{path}?{}", query(&filters))).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} {filters:?}: {body}"
            );
            assert_eq!(body["code"], "invalid", "{body}");
            assert!(!body["message"].as_str().unwrap().is_empty());
        }
    }
    let (_, wildcard) = app
        .get(&format!("/apps/{a}/messages?event_type=invoice.*"))
        .await;
    assert!(
        wildcard["message"].as_str().unwrap().contains("exactly"),
        "{wildcard}"
    );
    // Valid but impossible together: an empty page.
    let (status, page) = app
        .get(&format!(
            "/apps/{a}/endpoints/{ep}/attempts?outcome=succeeded&status=500"
        ))
        .await;
    assert_eq!(
        (status, page["data"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
}

/// An application whose endpoint answers what `status` says at the time: every message is
/// sent after the previous one has finished, so its attempts get that status.
async fn endpoint_with_history(app: &TestServer) -> (String, String, Vec<String>) {
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let receiver = Receiver::with(Arc::new(move |_| {
        Reply::status(answer.load(Ordering::SeqCst))
    }))
    .await;
    let (a, ep, _) = app.app_with_endpoint(&receiver).await;
    let mut messages = vec![];
    for code in [200, 503, 200, 404, 503, 200] {
        status.store(code, Ordering::SeqCst);
        let msg = app.send(&a, "invoice.paid", json!({"code": code})).await;
        app.wait_for_message(&a, &msg, WAIT, |m| {
            m["deliveries"][0]["state"] == "succeeded" || m["deliveries"][0]["state"] == "dead"
        })
        .await;
        messages.push(msg);
    }
    (a, ep, messages)
}

#[tokio::test]
async fn attempts_are_found_by_outcome_and_status_page_by_page() {
    let app = spawn_app().await;
    let (a, ep, messages) = endpoint_with_history(&app).await;
    // Another application's failures at another endpoint never show.
    let (b, _, _) = endpoint_with_history(&app).await;

    let path = format!("/apps/{a}/endpoints/{ep}/attempts");
    let everything = all_pages(&app, &path, &[], 250).await;
    // Three successes, and three messages retried three times before dying.
    assert_eq!(everything.len(), 3 + 3 * 4);
    let expect = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        ids(&everything
            .iter()
            .filter(|a| keep(a))
            .cloned()
            .collect::<Vec<_>>())
    };
    let status_of = |a: &Value| a["response_status"].as_i64().unwrap();
    let cases: Vec<(Filters, Vec<String>, usize)> = vec![
        (
            vec![("outcome", "succeeded")],
            expect(&|a| a["outcome"] == "succeeded"),
            3,
        ),
        (
            vec![("outcome", "retrying")],
            expect(&|a| a["outcome"] == "retrying"),
            9,
        ),
        (
            vec![("outcome", "dead")],
            expect(&|a| a["outcome"] == "dead"),
            3,
        ),
        (vec![("status", "503")], expect(&|a| status_of(a) == 503), 8),
        (
            vec![("status", "5xx")],
            expect(&|a| status_of(a) / 100 == 5),
            8,
        ),
        (
            vec![("status", "4xx")],
            expect(&|a| status_of(a) / 100 == 4),
            4,
        ),
        (
            vec![("status", "2xx")],
            expect(&|a| status_of(a) / 100 == 2),
            3,
        ),
        (vec![("status", "200")], expect(&|a| status_of(a) == 200), 3),
        (vec![("status", "500")], vec![], 0),
        (
            vec![("outcome", "dead"), ("status", "5xx")],
            expect(&|a| a["outcome"] == "dead" && status_of(a) / 100 == 5),
            2,
        ),
        (
            vec![("outcome", "retrying"), ("status", "404")],
            expect(&|a| a["outcome"] == "retrying" && status_of(a) == 404),
            3,
        ),
        (vec![("outcome", "succeeded"), ("status", "5xx")], vec![], 0),
    ];
    for (filters, expected, count) in cases {
        let found = all_pages(&app, &path, &filters, 2).await;
        assert_eq!(ids(&found), expected, "{filters:?}");
        assert_eq!(found.len(), count, "{filters:?}");
        assert!(found.iter().all(|f| f["app_id"] == a.as_str()));
    }

    // One message's attempts, filtered the same way.
    let failing = &messages[1];
    let msg_path = format!("/apps/{a}/messages/{failing}/attempts");
    let retrying = all_pages(&app, &msg_path, &[("outcome", "retrying")], 2).await;
    assert_eq!(retrying.len(), 3);
    assert!(
        retrying
            .iter()
            .all(|r| r["outcome"] == "retrying" && r["message_id"] == failing.as_str())
    );
    let dead = all_pages(
        &app,
        &msg_path,
        &[("outcome", "dead"), ("status", "503")],
        2,
    )
    .await;
    assert_eq!(dead.len(), 1);
    let none = all_pages(&app, &msg_path, &[("status", "2xx")], 2).await;
    assert!(none.is_empty());

    // `b`'s endpoint through `a`: nothing by that id here.
    let (_, endpoints_of_b) = app.get(&format!("/apps/{b}/endpoints")).await;
    let b_ep = endpoints_of_b["data"][0]["id"].as_str().unwrap();
    let (status, _) = app
        .get(&format!("/apps/{a}/endpoints/{b_ep}/attempts?outcome=dead"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The `href` of the page's "Older" link, unescaped.
fn older_link(html: &str) -> Option<String> {
    let end = html.find("\" rel=\"next\">Older</a>")?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(html[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

#[tokio::test]
async fn the_dashboard_filters_messages_and_attempts_and_keeps_the_filters_on_older_pages() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let other = app.create_app().await;
    let mut paid = vec![];
    for i in 0..53 {
        paid.push(
            send_keyed(&app, &a, "invoice.paid", Some(&format!("k{i}"))).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let created = send_keyed(&app, &a, "user.created", Some("<b>key</b>")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let foreign = send_keyed(&app, &other, "invoice.paid", Some("k1")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut browser = Browser::new(&app);
    browser.login().await;

    let first = browser
        .page(&format!("/apps/{a}?event_type=invoice.paid"))
        .await;
    assert!(
        first.contains("name=\"event_type\" value=\"invoice.paid\""),
        "the form keeps its value"
    );
    assert!(!first.contains(&created) && !first.contains(&foreign));
    let shown_first: Vec<&String> = paid
        .iter()
        .filter(|id| first.contains(id.as_str()))
        .collect();
    assert_eq!(shown_first.len(), 50);
    let older = older_link(&first).expect("an Older link");
    assert!(
        older.contains("event_type=invoice.paid") && older.contains("cursor="),
        "{older}"
    );
    let second = browser.page(&older).await;
    let shown_second: Vec<&String> = paid
        .iter()
        .filter(|id| second.contains(id.as_str()))
        .collect();
    assert_eq!(shown_second.len(), 3, "the rest, still filtered");
    assert!(!second.contains(&created));
    assert!(older_link(&second).is_none());

    let keyed = browser
        .page(&format!(
            "/apps/{a}?{}",
            query(&[
                ("idempotency_key", "<b>key</b>"),
                ("event_type", ""),
                ("since", ""),
                ("until", "")
            ])
        ))
        .await;
    assert!(keyed.contains(&created) && !keyed.contains(&paid[0]));
    assert!(
        keyed.contains("value=\"&#60;b&#62;key&#60;/b&#62;\""),
        "escaped in the form"
    );
    assert!(!keyed.contains("<b>key</b>"));

    // A datetime-local value (UTC) works as the form sends it.
    let empty = browser
        .page(&format!(
            "/apps/{a}?since=2000-01-01T00:00&until=2000-01-02T00:00"
        ))
        .await;
    assert!(empty.contains("No messages match"));
    assert!(!empty.contains(&paid[0]));

    // The endpoint page's attempts by outcome and status.
    let (b, ep, _) = endpoint_with_history(&app).await;
    let dead = browser
        .page(&format!("/apps/{b}/endpoints/{ep}?outcome=dead&status=5xx"))
        .await;
    assert_eq!(dead.matches("<tr class=\"dead\"").count(), 2, "{dead}");
    assert_eq!(dead.matches("<tr class=\"").count(), 2);
    assert!(dead.contains("<option value=\"dead\" selected>"));
    assert!(dead.contains("name=\"status\" value=\"5xx\""));
    assert!(
        !dead.contains("data-stream="),
        "a filtered list is not updated live"
    );
    let all = browser
        .page(&format!("/apps/{b}/endpoints/{ep}?outcome=&status="))
        .await;
    assert_eq!(all.matches("<tr class=\"").count(), 15);
    assert!(all.contains("data-stream="));
}
