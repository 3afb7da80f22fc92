//! The PostgreSQL helpers of the suite, through the command-line tools (`psql`,
//! `pgbench`) rather than a driver: recreating a database, running SQL, the pgbench
//! ceiling and the feed's commit timestamps.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Connection parts of a postgres:// URL, for the command-line tools.
struct Conn {
    host: String,
    port: String,
    user: String,
}

fn conn(url: &str) -> anyhow::Result<Conn> {
    let u = reqwest::Url::parse(url)?;
    Ok(Conn {
        host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: u.port().unwrap_or(5432).to_string(),
        user: if u.username().is_empty() {
            "postgres".into()
        } else {
            u.username().into()
        },
    })
}

pub fn psql(url: &str, db: &str, sql: &str) -> anyhow::Result<()> {
    psql_output(url, db, sql).map(drop)
}

/// Runs `sql` and returns what it printed, unaligned and without headers. `sql` goes in on
/// psql's standard input, so its length has no limit.
pub fn psql_output(url: &str, db: &str, sql: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let c = conn(url)?;
    let mut child = Command::new("psql")
        .args([
            "-h",
            &c.host,
            "-p",
            &c.port,
            "-U",
            &c.user,
            "-d",
            db,
            "-q",
            "-t",
            "-A",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = format!("{sql};\n");
    // psql reads all of its input before it answers, so writing first cannot deadlock.
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    written.context("writing to psql")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// PostgreSQL's commit timestamp of each of `xids` (full transaction ids, as in the
/// feed's event ids), in µs since the Unix epoch, from the herald database `db`; an error says
/// why not, for all of them: a commit timestamp is unknown when `track_commit_timestamp`
/// was off at the commit, or once it is too old to be kept.
pub fn commit_timestamps(
    server_url: &str,
    db: &str,
    xids: &[i64],
) -> anyhow::Result<HashMap<i64, i64>> {
    let tracked = psql_output(server_url, db, "show track_commit_timestamp")?;
    if tracked != "on" {
        bail!(
            "track_commit_timestamp is {tracked:?} on this cluster; scripts/pg.sh turns it \
             on when it starts the bench cluster, but a cluster that was already running \
             must be restarted (scripts/pg.sh stop target/pgbench)"
        );
    }
    let list: Vec<String> = xids.iter().map(i64::to_string).collect();
    // The xid (32 bits) of an xid8 is its low half; the text cast keeps to PostgreSQL 15's
    // parser, which has no xid8 -> xid cast.
    let sql = format!(
        "select x, (extract(epoch from pg_xact_commit_timestamp((x % 4294967296)::text::xid)) \
         * 1000000)::bigint from unnest('{{{}}}'::bigint[]) x",
        list.join(",")
    );
    let out = psql_output(server_url, db, &sql).context("reading commit timestamps")?;
    let mut committed = HashMap::with_capacity(xids.len());
    let mut unknown = 0;
    for line in out.lines().filter(|l| !l.is_empty()) {
        let (x, at) = line
            .split_once('|')
            .with_context(|| format!("unexpected psql output {line:?}"))?;
        let x: i64 = x.parse().with_context(|| format!("xid in {line:?}"))?;
        match at {
            "" => unknown += 1,
            at => {
                committed.insert(x, at.parse().with_context(|| format!("time in {line:?}"))?);
            }
        }
    }
    if unknown > 0 {
        bail!(
            "PostgreSQL has no commit timestamp for {unknown} of the {} transactions \
             (committed while track_commit_timestamp was off, or too old)",
            xids.len()
        );
    }
    if let Some(x) = xids.iter().find(|x| !committed.contains_key(x)) {
        bail!("psql returned no row for xid {x}");
    }
    Ok(committed)
}

pub fn recreate_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    psql(
        server_url,
        "postgres",
        &format!("drop database if exists {name} with (force)"),
    )?;
    psql(server_url, "postgres", &format!("create database {name}"))?;
    let mut u = reqwest::Url::parse(server_url)?;
    u.set_path(name);
    Ok(u.to_string())
}

/// pgbench on the same cluster: 64 clients, each transaction one durable one-row insert.
pub fn pgbench_ceiling(server_url: &str, seconds: u32) -> anyhow::Result<f64> {
    let db = "herald_bench_ceiling";
    recreate_database(server_url, db)?;
    psql(
        server_url,
        db,
        "create table ceiling (id bigserial primary key, v int not null, at timestamptz not null default now())",
    )?;
    let script = std::env::temp_dir().join("herald-ceiling.sql");
    std::fs::write(
        &script,
        "\\set v random(1, 1000000)\ninsert into ceiling (v) values (:v);\n",
    )?;
    let c = conn(server_url)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "64",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .args(["-h", &c.host, "-p", &c.port, "-U", &c.user, db])
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok());
    match tps {
        Some(t) => Ok(t),
        None => bail!(
            "pgbench printed no tps:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
