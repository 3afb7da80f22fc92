//! `docs/schema.sql` is the schema the migrations make: one place to read every table and
//! the live version of every SQL function, which a later migration may have replaced. The
//! file is generated here (`make schema`), from a database that was only migrated: the
//! history partitions the retention manager adds at start-up are not in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::fresh_database;

/// Where the schema is committed, from the repository's root.
const COMMITTED: &str = "docs/schema.sql";
/// Set (by `make schema`) to write the file instead of comparing with it.
const UPDATE: &str = "HERALD_UPDATE_SCHEMA";

#[tokio::test]
async fn the_committed_schema_is_what_the_migrations_make() {
    let url = fresh_database().await;
    let pool = herald::db::connect(&url, 2).await.unwrap();
    herald::db::migrate(&pool).await.unwrap();
    let major: i32 =
        sqlx::query_scalar("select current_setting('server_version_num')::int / 10000")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dumped = dump(&pg_dump(major), &url);
    let schema = format!(
        "{}\n{}",
        header(&root.join("migrations"), &dumped),
        normalised(&dumped)
    );
    let path = root.join(COMMITTED);
    if std::env::var_os(UPDATE).is_some() {
        std::fs::write(&path, &schema).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != schema {
        let line = committed
            .lines()
            .zip(schema.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(schema.lines().count()));
        panic!(
            "{COMMITTED} is not the schema the migrations make (they differ from line {}: \
             the file has {:?}, the migrations make {:?}). Regenerate it with `make schema` \
             and commit it with the migration.",
            line + 1,
            committed.lines().nth(line).unwrap_or("(its end)"),
            schema.lines().nth(line).unwrap_or("(its end)"),
        );
    }
}

/// The schema-only dump of Herald's own schema (without sqlx's bookkeeping table), as
/// pg_dump gives it.
fn dump(pg_dump: &Path, url: &str) -> String {
    let out = Command::new(pg_dump)
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema=herald",
            "--exclude-table=herald._sqlx_migrations",
            "--dbname",
            url,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_dump.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        pg_dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A pg_dump of the server's major version (an older one misreads the catalog, a newer one
/// writes differently), found where scripts/pg.sh finds the server's binaries, else on PATH.
fn pg_dump(major: i32) -> PathBuf {
    let packaged = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_dump"));
    let pg_dump = if packaged.is_file() {
        packaged
    } else {
        PathBuf::from("pg_dump")
    };
    let version = Command::new(&pg_dump)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let found = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(
        found,
        Some(major),
        "the test cluster is PostgreSQL {major}, but {} is {:?}: install the \
         postgresql-client-{major} package",
        pg_dump.display(),
        version.trim()
    );
    pg_dump
}

/// The dump without what depends on the machine or the run: pg_dump's session settings,
/// its version comments and its `\restrict` key (new on every run), and the blank lines
/// they leave.
fn normalised(dump: &str) -> String {
    let varying = |line: &&str| {
        [
            "SET ",
            "SELECT pg_catalog.set_config(",
            "\\restrict ",
            "\\unrestrict ",
            "-- Dumped ",
        ]
        .iter()
        .any(|start| line.starts_with(start))
    };
    let kept = dump
        .lines()
        .filter(|l| !varying(l))
        .collect::<Vec<_>>()
        .join("\n");
    let kept = kept
        .replace("--\n-- PostgreSQL database dump complete\n--\n", "")
        .replace("--\n-- PostgreSQL database dump\n--\n", "");
    let mut out = String::new();
    let mut blank = 0;
    for line in kept.trim().lines() {
        blank = if line.is_empty() { blank + 1 } else { 0 };
        if blank <= 2 {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The file's opening comment: what it is, and for each function in the dump the migration
/// that holds its live version (the last to create it) and those that held earlier ones.
fn header(migrations: &Path, dump: &str) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(migrations)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    // (function, every migration that creates it, in order)
    let mut defined: Vec<(String, Vec<String>)> = Vec::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let line = line.trim().to_lowercase();
            let Some(rest) = [
                "create or replace function herald.",
                "create function herald.",
            ]
            .iter()
            .find_map(|start| line.strip_prefix(start)) else {
                continue;
            };
            let function = rest.split(['(', ' ']).next().unwrap_or(rest).to_owned();
            // A migration that creates two overloads of a function is named once.
            match defined.iter_mut().find(|(f, _)| *f == function) {
                Some((_, by)) if by.last() == Some(&name) => {}
                Some((_, by)) => by.push(name.clone()),
                None => defined.push((function, vec![name.clone()])),
            }
        }
    }
    let live = |function: &str| dump.contains(&format!("CREATE FUNCTION herald.{function}("));
    defined.retain(|(function, _)| live(function));
    defined.sort();
    let width = defined.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    let mut header = String::from(
        "-- Herald's schema as its migrations leave it. Generated by tests/api/schema.rs\n\
         -- (`make schema`): do not edit. That test fails when this file and the migrations\n\
         -- differ. It is `pg_dump --schema-only --no-owner --no-privileges --schema=herald\n\
         -- --exclude-table=herald._sqlx_migrations` of a freshly migrated database, without\n\
         -- pg_dump's session settings and version comments.\n\
         --\n\
         -- A migration never changes once applied, so a function that a later migration\n\
         -- replaced still reads in its first one as it was then. The live version of each\n\
         -- function is the one below; it comes from the last migration named here:\n\
         --\n",
    );
    for (function, by) in &defined {
        let (last, earlier) = by.split_last().unwrap();
        header.push_str(&format!("--   herald.{function:<width$}  {last}"));
        if !earlier.is_empty() {
            header.push_str(&format!(" (earlier versions: {})", earlier.join(", ")));
        }
        header.push('\n');
    }
    header
}

/// The Rust enums of `herald::domain` name exactly the labels of the schema's enums, in
/// their order: a label added to one and not the other fails here, not in a query.
#[tokio::test]
async fn the_state_enums_match_the_schema() {
    use herald::domain::{AttemptOutcome, AttemptTrigger, DeliveryState, EventKind};
    let url = fresh_database().await;
    let pool = herald::db::connect(&url, 2).await.unwrap();
    herald::db::migrate(&pool).await.unwrap();
    let rust: [(&str, Vec<&str>); 4] = [
        (
            "delivery_state",
            DeliveryState::ALL.iter().map(|s| s.as_str()).collect(),
        ),
        (
            "attempt_outcome",
            AttemptOutcome::ALL.iter().map(|s| s.as_str()).collect(),
        ),
        (
            "attempt_trigger",
            AttemptTrigger::ALL.iter().map(|s| s.as_str()).collect(),
        ),
        (
            "event_kind",
            EventKind::ALL.iter().map(|s| s.as_str()).collect(),
        ),
    ];
    for (name, labels) in rust {
        let schema: Vec<String> = sqlx::query_scalar(
            "select e.enumlabel::text from pg_enum e
               join pg_type t on t.oid = e.enumtypid
               join pg_namespace n on n.oid = t.typnamespace
              where n.nspname = 'herald' and t.typname = $1
              order by e.enumsortorder",
        )
        .bind(name)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(schema, labels, "herald.{name}");
    }
    pool.close().await;
}
