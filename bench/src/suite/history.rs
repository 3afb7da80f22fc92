//! The `history` scenarios: Herald on two hours of history (3 million messages by
//! default, loaded through SQL), against which the burst runs again, the operator views
//! are timed, one partition's worth is dropped and then the whole application is deleted
//! while a neighbour sends (`history burst`); and a soak under
//! steady load with a retention of two minutes (`history soak`).

use std::sync::mpsc;

use super::*;

pub const HISTORY_BURST: &str = "history burst";
pub const HISTORY_SOAK: &str = "history soak";
/// The history's database, and the soak's.
const HISTORY_DB: &str = "herald_history";
const SOAK_DB: &str = "herald_soak";
/// Two hours in 4-minute partitions: 30, about what the default 1d interval keeps for
/// the default 30d retention (a partitioned query's cost follows the partition count).
const INTERVAL_SECS: i64 = 240;
const SPAN_SECS: i64 = 7200;
/// Sequential requests timed per view (after one more, untimed, reported apart).
const VIEW_REQUESTS: usize = 30;
/// The loaded messages' event types: `history.0` .. `history.3`.
const EVENT_TYPES: usize = 4;
/// Targets (issue 14).
pub const BURST_RATIO_TARGET_PCT: f64 = 90.0;
pub const VIEW_P99_TARGET_MS: f64 = 50.0;
pub const DROP_TARGET_SECS: f64 = 1.0;
/// The removal's sampling of open transactions, and the neighbour's sends before it.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const NEIGHBOUR_SENDS: usize = 300;
/// The soak's database is flat if its second half's largest sample is within this of
/// its smallest.
pub const SOAK_FLAT_PCT: f64 = 15.0;
const SOAK_RATE: f64 = 200.0;
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SOAK_ENV: [(&str, &str); 4] = [
    ("HERALD_RETENTION", "2m"),
    ("HERALD_PARTITION_INTERVAL", "15s"),
    ("HERALD_RETRY_SCHEDULE", "1s,2s"),
    ("HERALD_IDEMPOTENCY_WINDOW", "1m"),
];

/// What `history burst` ran on, and the views and the drop measured on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    pub partition_interval: String,
    /// Messages loaded, each with one succeeded delivery and one attempt.
    pub messages: u64,
    /// Message partitions (each a message/delivery pair) once loaded.
    pub partitions: u64,
    pub load_secs: f64,
    /// `vacuum (analyze)` of the three tables after the load.
    pub vacuum_analyze_secs: f64,
    /// Then a checkpoint and the wait for autovacuum to leave the database alone, so that
    /// the burst measures the history, not the load's aftermath (absent from older runs).
    #[serde(default)]
    pub settle_secs: f64,
    /// Sizes (pg_total_relation_size over every partition) after the load.
    pub sizes: TableSizes,
    /// The empty-database burst of the same run, and this burst as a share of it.
    pub baseline_delivered_per_s: Option<f64>,
    pub burst_ratio_pct: Option<f64>,
    pub views: Vec<ViewTiming>,
    pub drop: DropResult,
    /// Absent from runs before it was measured.
    #[serde(default)]
    pub removal: Option<RemovalResult>,
}

/// Deleting the history's application at the end: the answer, the background removal,
/// the longest transaction Herald held meanwhile, and another application's sends before
/// and during it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalResult {
    pub answer_ms: f64,
    pub removal_secs: f64,
    pub batches: u64,
    pub messages: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Herald's longest open transaction, sampled every [`SAMPLE_EVERY`].
    pub longest_transaction_ms: f64,
    /// Sequential sends to an application of its own, before and during the removal.
    pub neighbour_before: Latency,
    pub neighbour_during: Latency,
    pub neighbour_sends_during: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TableSizes {
    pub message_mb: f64,
    pub delivery_mb: f64,
    pub attempt_mb: f64,
}

impl TableSizes {
    pub fn total_mb(&self) -> f64 {
        round(self.message_mb + self.delivery_mb + self.attempt_mb)
    }
}

/// One view, requested `requests` times in a row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewTiming {
    pub name: String,
    /// The route, `{app}` and `{ep}` standing for the history's application and endpoint.
    pub path: String,
    pub requests: usize,
    /// The untimed first request.
    pub first_ms: f64,
    pub latency: Latency,
    /// Answers other than 2xx, and the first of them.
    pub failures: usize,
    pub failure: Option<String>,
}

/// Dropping the oldest message/delivery pair and the oldest attempt partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropResult {
    pub message_suffix: String,
    pub attempt_suffix: String,
    pub messages_removed: u64,
    pub deliveries_removed: u64,
    pub attempts_removed: u64,
    pub before: TableSizes,
    pub after: TableSizes,
    /// Each `herald.drop_history_partition` call, commit included, and what it said.
    pub message_drop_secs: f64,
    pub attempt_drop_secs: f64,
    pub message_said: String,
    pub attempt_said: String,
}

/// The database's size under steady load with a retention of minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    pub env: Vec<(String, String)>,
    pub rate: f64,
    pub secs: u64,
    /// (seconds since the load started, pg_database_size in MB).
    pub samples: Vec<(f64, f64)>,
    pub second_half_min_mb: f64,
    pub second_half_max_mb: f64,
    pub flat: bool,
    /// Message partitions at the end.
    pub partitions_at_end: u64,
}

/// `history burst`: loads the history, runs the burst, times the views, drops the
/// oldest partitions; `baseline` is the empty-database burst's delivered/s.
pub(super) async fn burst_on_history(
    settings: &Settings,
    receiver: Receiver,
    baseline: Option<f64>,
) -> anyhow::Result<ScenarioResult> {
    let server = settings.server_url.as_str();
    let db_url = recreate_database(server, HISTORY_DB)?;
    let interval = format!("{}m", INTERVAL_SECS / 60);
    let env = [("HERALD_PARTITION_INTERVAL", interval.as_str())];
    let mut herald = HeraldProcess::start(settings, &db_url, &env, "herald-history.log").await?;
    let mut run = Run::on(settings, &herald, receiver);
    let (app, _) = run.setup("history", 1).await?;
    let app_uuid = uuid_of(&app)?;
    let ep_uuid = sql(
        server,
        &format!("select id from herald.endpoint where app_id = '{app_uuid}'"),
    )?;
    let ep = format!("ep_{}", ep_uuid.replace('-', ""));

    let messages = (settings.history_messages / run.scale) as u64;
    let started = Instant::now();
    let partitions = load(server, &app_uuid, &ep_uuid, messages)?;
    // The load bypasses triggers: the per-minute counts the views read (migration 0017)
    // are written as the attempts' trigger would have.
    sql(
        server,
        "insert into herald.attempt_minute (endpoint_id, minute, app_id, succeeded, total)
         select endpoint_id, date_trunc('minute', created_at), app_id,
                count(*) filter (where outcome = 'succeeded'), count(*)
           from herald.attempt group by 1, 2, 3
         on conflict (endpoint_id, minute) do update
            set succeeded = herald.attempt_minute.succeeded + excluded.succeeded,
                total = herald.attempt_minute.total + excluded.total",
    )?;
    let load_secs = round(started.elapsed().as_secs_f64());
    let started = Instant::now();
    sql(
        server,
        "vacuum (analyze) herald.message, herald.delivery, herald.attempt",
    )?;
    let vacuum_analyze_secs = round(started.elapsed().as_secs_f64());
    let started = Instant::now();
    settle(server)?;
    let settle_secs = round(started.elapsed().as_secs_f64());
    let sizes = table_sizes(server)?;
    eprintln!(
        "history: {messages} messages in {partitions} partitions of {interval} loaded in \
         {load_secs} s, vacuum analyze {vacuum_analyze_secs} s, settled in {settle_secs} s, \
         {:.0} MB",
        sizes.total_mb()
    );

    let mut result = run.closed(HISTORY_BURST, 10_000, 64, 1).await?;
    let views = run.views(&app, &ep).await?;
    let drop = drop_oldest(server)?;
    let removal = run.remove(server, &app).await?;
    herald.stop();
    let ratio = baseline
        .filter(|b| *b > 0.0)
        .map(|b| round(100.0 * result.delivered_per_s / b));
    result.history = Some(HistoryResult {
        partition_interval: interval,
        messages,
        partitions,
        load_secs,
        vacuum_analyze_secs,
        settle_secs,
        sizes,
        baseline_delivered_per_s: baseline,
        burst_ratio_pct: ratio,
        views,
        drop,
        removal: Some(removal),
    });
    Ok(result)
}

/// `history soak`: steady load for `--soak-secs` on a fresh database with a retention
/// of two minutes in 15 s partitions, sampling the database's size.
pub(super) async fn soak(
    settings: &Settings,
    receiver: Receiver,
) -> anyhow::Result<ScenarioResult> {
    let server = settings.server_url.clone();
    let db_url = recreate_database(&server, SOAK_DB)?;
    let mut herald = HeraldProcess::start(settings, &db_url, &SOAK_ENV, "herald-soak.log").await?;
    let mut run = Run::on(settings, &herald, receiver);
    let (app, paths) = run.setup(HISTORY_SOAK, 1).await?;
    let secs = settings.soak_secs;
    let load = Load {
        count: (SOAK_RATE * secs as f64) as usize,
        concurrency: 256,
        rate: Some(SOAK_RATE),
        payload_bytes: 256,
    };
    // Samples on a thread of its own (psql blocks) until told to stop.
    let (stop, stopped) = mpsc::channel::<()>();
    let sampler = std::thread::spawn(move || {
        let start = Instant::now();
        let mut samples = Vec::new();
        loop {
            if let Ok(bytes) = psql_output(
                &server,
                SOAK_DB,
                "select pg_database_size(current_database())",
            )
            .and_then(|s| Ok(s.parse::<f64>()?))
            {
                samples.push((round(start.elapsed().as_secs_f64()), round(bytes / 1e6)));
            }
            if !matches!(
                stopped.recv_timeout(SOAK_SAMPLE_EVERY),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return samples;
            }
        }
    });
    let offered =
        format!("open loop, {SOAK_RATE} msg/s for {secs} s; retention 2m, 15 s partitions");
    let measured = run
        .measure(HISTORY_SOAK, &app, &paths, &load, offered)
        .await;
    let _ = stop.send(());
    let samples = sampler.join().expect("the sampler does not panic");
    let partitions = psql_output(
        &settings.server_url,
        SOAK_DB,
        "select count(*) from herald.history_partition where kind = 'message'",
    )
    .map(|n| n.parse().unwrap_or(0));
    herald.stop();
    let mut result = measured?;
    let half: Vec<f64> = samples
        .iter()
        .filter(|s| s.0 >= secs as f64 / 2.0 && s.0 <= secs as f64)
        .map(|s| s.1)
        .collect();
    let min = half.iter().copied().fold(f64::INFINITY, f64::min);
    let max = half.iter().copied().fold(0.0, f64::max);
    result.soak = Some(SoakResult {
        env: SOAK_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        rate: SOAK_RATE,
        secs,
        samples,
        second_half_min_mb: if half.is_empty() { 0.0 } else { min },
        second_half_max_mb: max,
        flat: !half.is_empty() && max <= min * (1.0 + SOAK_FLAT_PCT / 100.0),
        partitions_at_end: partitions?,
    });
    Ok(result)
}

/// The uuid of an `app_<32 hex>` id, as PostgreSQL reads it.
fn uuid_of(id: &str) -> anyhow::Result<String> {
    let hex = id.strip_prefix("app_").unwrap_or_default();
    anyhow::ensure!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "unexpected application id {id:?}"
    );
    Ok(hex.to_owned())
}

/// Waits until the load's writes are behind the cluster: a checkpoint (the load leaves
/// gigabytes of WAL that checkpoints would otherwise write during the burst: one run had
/// three checkpoints of 30-60 s each under it, and PostgreSQL used 15.5 CPU s against
/// 8.6) and no autovacuum worker on the database, for at most two minutes.
fn settle(server: &str) -> anyhow::Result<()> {
    sql(server, "checkpoint")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let busy: i64 = sql(
            server,
            &format!(
                "select count(*) from pg_stat_activity
                  where backend_type = 'autovacuum worker' and datname = '{HISTORY_DB}'"
            ),
        )?
        .parse()?;
        if busy == 0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    sql(server, "checkpoint")?;
    Ok(())
}

/// A statement on the history's database.
fn sql(server: &str, sql: &str) -> anyhow::Result<String> {
    psql_output(server, HISTORY_DB, sql)
}

/// Creates the partitions of the last two hours that Herald did not (it starts at the
/// boundary before its start-up), oldest first, then loads `messages` spread evenly
/// from the boundary at or before two hours ago to now, one chunk per partition, with
/// triggers and foreign-key checks off. Returns how many message partitions there are.
fn load(server: &str, app: &str, ep: &str, messages: u64) -> anyhow::Result<u64> {
    let now: f64 = sql(server, "select extract(epoch from now())")?.parse()?;
    let start = (now as i64 - SPAN_SECS).div_euclid(INTERVAL_SECS) * INTERVAL_SECS;
    sql(
        server,
        &format!(
            "do $$
             declare k text; t timestamptz; first timestamptz;
             begin
                 foreach k in array array['message', 'attempt'] loop
                     select min(starts_at) into first from herald.history_partition
                      where kind = k;
                     t := to_timestamp({start});
                     while t < first loop
                         perform herald.create_history_partition(
                             k, t, t + make_interval(secs => {INTERVAL_SECS}));
                         t := t + make_interval(secs => {INTERVAL_SECS});
                     end loop;
                 end loop;
             end $$"
        ),
    )?;
    let step = (now - start as f64) / messages.max(1) as f64;
    let chunks = ((now as i64 - start) / INTERVAL_SECS + 1) as u64;
    // The driver's payload: 256 bytes.
    let filler = "x".repeat(242);
    for c in 0..chunks {
        let (from, to) = (messages * c / chunks, messages * (c + 1) / chunks);
        if from == to {
            continue;
        }
        // Each message: the id of its time; its delivery's id carries the same time; its
        // attempt's id, the time it ended (3 ms later).
        sql(
            server,
            &format!(
                "set session_replication_role = replica;
                 with m as (
                     insert into herald.message (id, app_id, event_type, payload, created_at)
                     select herald.uuid_v7_at(herald.uuid_v7_floor(t)), '{app}',
                            'history.' || (i % {EVENT_TYPES}),
                            ('{{\"n\":' || i || ',\"data\":{{\"filler\":\"{filler}\"}}}}')::json, t
                       from (select i, to_timestamp({start} + i * {step}) t
                               from generate_series({from}::bigint, {to} - 1) i) s
                     returning id, created_at),
                 d as (
                     insert into herald.delivery (id, message_id, endpoint_id, state,
                                                  attempt_count, next_attempt_at, created_at,
                                                  updated_at)
                     select herald.uuid_v7_at(m.id), m.id, '{ep}', 'succeeded', 1,
                            m.created_at, m.created_at, m.created_at + interval '3 ms'
                       from m
                     returning id, message_id, created_at)
                 insert into herald.attempt (id, delivery_id, message_id, endpoint_id, app_id,
                                             attempt, trigger, outcome, response_status,
                                             response_body, duration_ms, created_at)
                 select herald.uuid_v7_at(herald.uuid_v7_floor(d.created_at + interval '3 ms')),
                        d.id, d.message_id, '{ep}', '{app}', 1, 'scheduled', 'succeeded', 200,
                        '', 1, d.created_at + interval '2 ms'
                   from d"
            ),
        )?;
    }
    let in_default = sql(
        server,
        "select (select count(*) from herald.message_default)
              + (select count(*) from herald.attempt_default)",
    )?;
    if in_default != "0" {
        eprintln!("history: {in_default} loaded rows are in the default partitions");
    }
    Ok(sql(
        server,
        "select count(*) from herald.history_partition where kind = 'message'",
    )?
    .parse()?)
}

fn table_sizes(server: &str) -> anyhow::Result<TableSizes> {
    let size = |t: &str| {
        format!(
            "(select coalesce(sum(pg_total_relation_size(relid)), 0) / 1e6
                from pg_partition_tree('herald.{t}') where isleaf)"
        )
    };
    let out = sql(
        server,
        &format!(
            "select round({}, 1) || '|' || round({}, 1) || '|' || round({}, 1)",
            size("message"),
            size("delivery"),
            size("attempt")
        ),
    )?;
    let mb: Vec<f64> = three_numbers(&out, "table sizes")?;
    Ok(TableSizes {
        message_mb: mb[0],
        delivery_mb: mb[1],
        attempt_mb: mb[2],
    })
}

/// The three `|`-separated numbers of a query's answer `out`; the error names `what`.
fn three_numbers<T>(out: &str, what: &str) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let numbers: Vec<T> = out
        .split('|')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} {out:?}"))?;
    anyhow::ensure!(numbers.len() == 3, "{what} {out:?}");
    Ok(numbers)
}

/// Drops the oldest message/delivery pair and the oldest attempt partition, each in its
/// own call of `herald.drop_history_partition`, timed by the server's clock around it.
fn drop_oldest(server: &str) -> anyhow::Result<DropResult> {
    let oldest = |kind: &str| {
        sql(
            server,
            &format!(
                "select suffix from herald.history_partition where kind = '{kind}'
                  order by starts_at limit 1"
            ),
        )
    };
    let (message_suffix, attempt_suffix) = (oldest("message")?, oldest("attempt")?);
    let rows = sql(
        server,
        &format!(
            "select (select count(*) from herald.message_{message_suffix}) || '|' ||
                    (select count(*) from herald.delivery_{message_suffix}) || '|' ||
                    (select count(*) from herald.attempt_{attempt_suffix})"
        ),
    )?;
    let rows: Vec<u64> = three_numbers(&rows, "row counts")?;
    let before = table_sizes(server)?;
    let timed_drop = |kind: &str, suffix: &str| -> anyhow::Result<(f64, String)> {
        // Three statements, each its own transaction: the drop's commit is inside.
        let out = sql(
            server,
            &format!(
                "select extract(epoch from clock_timestamp());
                 select herald.drop_history_partition('{kind}', '{suffix}', 10000);
                 select extract(epoch from clock_timestamp())"
            ),
        )?;
        let lines: Vec<&str> = out.lines().collect();
        anyhow::ensure!(lines.len() == 3, "unexpected output of the drop: {out:?}");
        let secs = lines[2].parse::<f64>()? - lines[0].parse::<f64>()?;
        Ok(((secs * 1000.0).round() / 1000.0, lines[1].to_owned()))
    };
    let (message_drop_secs, message_said) = timed_drop("message", &message_suffix)?;
    let (attempt_drop_secs, attempt_said) = timed_drop("attempt", &attempt_suffix)?;
    Ok(DropResult {
        message_suffix,
        attempt_suffix,
        messages_removed: rows[0],
        deliveries_removed: rows[1],
        attempts_removed: rows[2],
        before,
        after: table_sizes(server)?,
        message_drop_secs,
        attempt_drop_secs,
        message_said,
        attempt_said,
    })
}

impl Run {
    /// Every operator view of issue 14's point 6, each requested [`VIEW_REQUESTS`] times
    /// in a row after one untimed request: the dashboard's pages with a session cookie
    /// from `POST /login`, the API with the admin token.
    async fn views(&self, app: &str, ep: &str) -> anyhow::Result<Vec<ViewTiming>> {
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

    /// Deletes `app` and follows its removal to the end, sending to a neighbouring
    /// application meanwhile, one message at a time.
    async fn remove(&self, server: &str, app: &str) -> anyhow::Result<RemovalResult> {
        let neighbour = self.api.post("/apps", json!({"name": "neighbour"})).await?;
        let neighbour = neighbour["id"]
            .as_str()
            .context("no application id")?
            .to_owned();
        let mut before = Vec::with_capacity(NEIGHBOUR_SENDS);
        for i in 0..NEIGHBOUR_SENDS {
            before.push(self.timed_send(&neighbour, i).await?);
        }

        let (stop, stopped) = mpsc::channel::<()>();
        let at = server.to_owned();
        let sampler = std::thread::spawn(move || {
            let mut longest: f64 = 0.0;
            while stopped.recv_timeout(SAMPLE_EVERY).is_err() {
                let open = sql(
                    &at,
                    "select coalesce(max(extract(epoch from clock_timestamp() - xact_start)), 0)
                       from pg_stat_activity
                      where application_name = 'herald' and state <> 'idle'
                        and xact_start is not null",
                );
                if let Some(secs) = open.ok().and_then(|s| s.parse::<f64>().ok()) {
                    longest = longest.max(secs * 1000.0);
                }
            }
            longest
        });

        let started = Instant::now();
        let id = self.api.queue_removal(&format!("/apps/{app}")).await?;
        let answer_ms = round(started.elapsed().as_secs_f64() * 1000.0);
        let mut during = Vec::new();
        let done = loop {
            for _ in 0..20 {
                during.push(self.timed_send(&neighbour, during.len()).await?);
            }
            if let Some(done) = self.api.removal_done(&id).await? {
                break done;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3600),
                "removal {id} did not finish within an hour"
            );
        };
        let removal_secs = round(started.elapsed().as_secs_f64());
        let _ = stop.send(());
        let longest_transaction_ms = round(sampler.join().unwrap_or(0.0));
        let count = |k: &str| done["removed"][k].as_u64().unwrap_or(0);
        let result = RemovalResult {
            answer_ms,
            removal_secs,
            batches: done["batches"].as_u64().unwrap_or(0),
            messages: count("messages"),
            deliveries: count("deliveries"),
            attempts: count("attempts"),
            longest_transaction_ms,
            neighbour_sends_during: during.len(),
            neighbour_before: Latency::of(&mut before),
            neighbour_during: Latency::of(&mut during),
        };
        eprintln!(
            "history: removal answered in {answer_ms} ms, done in {removal_secs} s \
             ({} batches), longest transaction {longest_transaction_ms} ms; neighbour p99 \
             {:.1} ms before, {:.1} ms during",
            result.batches, result.neighbour_before.p99_ms, result.neighbour_during.p99_ms
        );
        Ok(result)
    }

    async fn timed_send(&self, app: &str, n: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.api
            .post(
                &format!("/apps/{app}/messages"),
                json!({"event_type": "neighbour.ping", "payload": {"n": n}}),
            )
            .await?;
        Ok(started.elapsed())
    }
}
