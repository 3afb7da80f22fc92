//! `make run`'s set-up on this machine: the `.env` it writes holds the admin token, and its
//! private PostgreSQL trusts whoever reaches it, so both must be its owner's alone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs the real scripts/run.sh in a scratch copy of the repository with a database
/// given (no cluster) and no cargo on PATH: it writes `.env`, then stops at the build.
fn run_sh_in(dir: &Path) {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::copy("scripts/run.sh", dir.join("scripts/run.sh")).unwrap();
    std::fs::copy(".env.example", dir.join(".env.example")).unwrap();
    let status = Command::new("bash")
        .arg(dir.join("scripts/run.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DATABASE_URL", "postgres://nowhere/herald")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "run.sh was not meant to get past the build"
    );
}

#[test]
fn make_run_writes_env_for_its_owner_only() {
    let dir = std::env::temp_dir().join(format!("herald-run-{}", uuid::Uuid::now_v7()));
    run_sh_in(&dir);
    let env = dir.join(".env");
    assert!(
        std::fs::read_to_string(&env)
            .unwrap()
            .contains("HERALD_ADMIN_TOKEN=")
    );
    assert_eq!(mode(&env), 0o600, "a fresh .env");

    // One left readable by everyone (an older run, a copy) is tightened.
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    run_sh_in(&dir);
    assert_eq!(mode(&env), 0o600, "an existing .env");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_dev_cluster_is_reachable_by_its_owner_only() {
    let dir = std::env::temp_dir().join(format!("herald-devpg-{}", uuid::Uuid::now_v7()));
    // Below the ephemeral range, as scripts/pg.sh asks; free at the time of asking.
    let port = (20000..30000)
        .map(|p| p + (std::process::id() % 1000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap()
        .to_string();
    let pg = |args: &[&str]| {
        Command::new("scripts/pg.sh")
            .args(args)
            .status()
            .unwrap()
            .success()
    };
    let d = dir.to_str().unwrap();
    assert!(pg(&["start", d, &port]), "scripts/pg.sh start");
    let psql = |user: Option<&str>, host: &str| {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "psql"]);
                c
            }
            None => Command::new("psql"),
        };
        cmd.args([
            "-h", host, "-p", &port, "-U", "postgres", "-tAc", "select 1", "postgres",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap()
    };
    let owner = psql(None, d);
    let tcp = psql(None, "127.0.0.1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let other = root.then(|| psql(Some("nobody"), d));
    let socket_dir = mode(&dir);
    pg(&["stop", d]);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        "1",
        "the owner gets in"
    );
    assert!(!tcp.status.success(), "the dev cluster answers on TCP");
    assert_eq!(socket_dir, 0o700);
    if let Some(other) = other {
        assert!(!other.status.success(), "another local user got in");
    }
}

/// `make run` on a fresh checkout, up to its build: it writes `.env`, starts the private
/// cluster under `.data/pg` and creates the `herald` database there. (Run as root, the
/// cluster belongs to the postgres user, who must be able to reach `.data/pg`.)
#[test]
fn make_run_starts_its_private_cluster_on_a_fresh_checkout() {
    let dir = std::env::temp_dir().join(format!("herald-run-pg-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    for file in ["scripts/run.sh", "scripts/pg.sh", ".env.example"] {
        std::fs::copy(file, dir.join(file)).unwrap();
    }
    let port = (20000..30000)
        .map(|p| p + (std::process::id() % 1000) as u16 + 7)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap()
        .to_string();
    let out = Command::new("bash")
        .arg(dir.join("scripts/run.sh"))
        .env_clear()
        // No cargo here: the script stops at the build, after the database is ready.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HERALD_DEV_PG_PORT", &port)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pg_dir = dir.join(".data/pg");
    let herald_db = Command::new("psql")
        .args([
            "-h",
            pg_dir.to_str().unwrap(),
            "-p",
            &port,
            "-U",
            "postgres",
            "-tAc",
        ])
        .arg("select 1 from pg_database where datname = 'herald'")
        .arg("postgres")
        .output()
        .unwrap();
    Command::new("scripts/pg.sh")
        .args(["stop", pg_dir.to_str().unwrap()])
        .status()
        .unwrap();
    let env_mode = mode(&dir.join(".env"));
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        stdout.contains("PostgreSQL: postgres://postgres@localhost/herald?host="),
        "the cluster did not start: {stdout}{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&herald_db.stdout).trim(), "1");
    assert_eq!(env_mode, 0o600);
}
