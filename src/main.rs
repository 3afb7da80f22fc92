use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::config::Config;
use herald::delivery::signature::{DEFAULT_TOLERANCE_SECS, verify};
use herald::domain::SigningSecret;
use herald::server::{Server, shutdown_signal};
use herald::{db, telemetry};

/// Herald: reliable, signed webhook delivery on PostgreSQL.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the dashboard and the worker pool (runs migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the API's OpenAPI document: the routes `GET /api/v1/openapi.json` serves, without
    /// the catalog's `webhooks` (those are read from the database, which this does not open).
    Openapi,
    /// Check the Standard Webhooks signature of a received request.
    Verify {
        /// The endpoint's signing secret (whsec_...). Prefer the environment variable.
        #[arg(long, env = "HERALD_VERIFY_SECRET", hide_env_values = true)]
        secret: String,
        /// The webhook-id header.
        #[arg(long)]
        id: String,
        /// The webhook-timestamp header.
        #[arg(long)]
        timestamp: String,
        /// The webhook-signature header.
        #[arg(long)]
        signature: String,
        /// File holding the exact request body; `-` (the default) reads standard input.
        #[arg(long, default_value = "-")]
        body: PathBuf,
        /// Largest accepted distance between the timestamp and now, in seconds.
        #[arg(long, default_value_t = DEFAULT_TOLERANCE_SECS)]
        tolerance: i64,
        /// Skip the timestamp check (to verify an old captured request).
        #[arg(long)]
        ignore_timestamp: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::Openapi => print_openapi(),
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
            body,
            tolerance,
            ignore_timestamp,
        } => {
            return check_signature(
                &secret,
                &id,
                &timestamp,
                &signature,
                &body,
                if ignore_timestamp {
                    i64::MAX
                } else {
                    tolerance
                },
            );
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    // Before the configuration, whose default for inbound connections is what this limit
    // leaves.
    let raised = herald::config::raise_open_files_limit();
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    if let Some((before, after)) = raised {
        tracing::info!(
            before,
            after,
            "raised the open-files limit to the hard limit"
        );
    }
    let server = Server::build(config).await?;
    let cancel = server.cancel_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    server.run().await
}

async fn migrate() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let pool = db::connect(&url, 1).await?;
    db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

fn print_openapi() -> anyhow::Result<()> {
    println!("{}", herald::http::openapi().to_pretty_json()?);
    Ok(())
}

fn check_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &PathBuf,
    tolerance: i64,
) -> ExitCode {
    let secret = match SigningSecret::parse(secret) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald verify: {e}");
            return ExitCode::from(2);
        }
    };
    let mut bytes = Vec::new();
    let read = if body.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(drop)
    } else {
        std::fs::read(body).map(|b| bytes = b)
    };
    if let Err(e) = read {
        eprintln!("herald verify: cannot read the body: {e}");
        return ExitCode::from(2);
    }
    let now = chrono::Utc::now().timestamp();
    match verify(&secret, id, timestamp, signature, &bytes, now, tolerance) {
        Ok(()) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("invalid: {e}");
            ExitCode::FAILURE
        }
    }
}
