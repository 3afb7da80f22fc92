//! The `history burst` scenario: Herald on two hours of history (3 million messages by
//! default, loaded through SQL), against which the burst runs again, the operator views
//! are timed (`views`), one partition's worth is dropped and then the whole application
//! is deleted while a neighbour sends (`removal`).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Run, Settings};
use crate::pg::{psql_output, recreate_database};
use crate::receiver::Receiver;
use crate::results::{DropResult, HistoryResult, ScenarioResult, TableSizes};
use crate::stats::round;

mod removal;
mod views;

pub const HISTORY_BURST: &str = "history burst";
/// The history's database.
const HISTORY_DB: &str = "herald_history";
/// Two hours in 4-minute partitions: 30, about what the default 1d interval keeps for
/// the default 30d retention (a partitioned query's cost follows the partition count).
const INTERVAL_SECS: i64 = 240;
const SPAN_SECS: i64 = 7200;
/// The loaded messages' event types: `history.0` .. `history.3`.
const EVENT_TYPES: usize = 4;

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
    let mut herald = settings
        .start_herald(&db_url, &env, "herald-history.log")
        .await?;
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
