//! The processes the suite measures, from `/proc`: `herald serve` (started, stopped, its
//! peak RSS), the CPU time of a process or a thread, and the open-file limits that a
//! thousand SSE subscribers need. Linux only, as the suite is.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::results::CpuSeconds;
use crate::stats::round;

/// The admin token of the `herald serve` the suite starts.
pub const TOKEN: &str = "bench-admin-token-0123456789";

/// CPU seconds used so far by `herald serve` (`herald_pid`), by every PostgreSQL process
/// and by this benchmark.
pub fn cpu_seconds(herald_pid: u32) -> CpuSeconds {
    let mut postgres = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                postgres += cpu_of(&pid.to_string());
            }
        }
    }
    CpuSeconds {
        herald: cpu_of(&herald_pid.to_string()),
        postgres,
        bench: cpu_of("self"),
    }
}

/// utime + stime of a process (or `self/task/{tid}`: a thread), in seconds (USER_HZ is
/// 100 on Linux).
pub fn cpu_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of this process's thread `tid` so far (0 while the thread has not said
/// its id: see [`thread_id`]).
pub fn thread_cpu(tid: u64) -> f64 {
    match tid {
        0 => 0.0,
        tid => cpu_of(&format!("self/task/{tid}")),
    }
}

/// The calling thread's id, from /proc (0 when unknown).
pub fn thread_id() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The open-file limit (soft) of a process, from /proc/{pid}/limits.
pub fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Raises this process's soft open-file limit towards its hard limit (at most 1 << 20),
/// so that a thousand subscribers fit; `herald serve`, started by the suite, inherits it.
#[cfg(target_os = "linux")]
pub fn raise_open_files_limit() -> std::io::Result<()> {
    use std::ffi::{c_int, c_ulong};
    // glibc and musl: rlim_t is unsigned long; RLIMIT_NOFILE is 7 except on the
    // architectures excluded below.
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    compile_error!("RLIMIT_NOFILE differs on this architecture");
    const RLIMIT_NOFILE: c_int = 7;
    #[repr(C)]
    struct Rlimit {
        cur: c_ulong,
        max: c_ulong,
    }
    unsafe extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut Rlimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const Rlimit) -> c_int;
    }
    let mut limit = Rlimit { cur: 0, max: 0 };
    // SAFETY: `limit` is a valid, writable struct with the layout of `struct rlimit`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = limit.max.min(1 << 20);
    if limit.cur < wanted {
        let raised = Rlimit {
            cur: wanted,
            max: limit.max,
        };
        // SAFETY: `raised` is a valid `struct rlimit`; only the soft limit grows, up to
        // the hard limit, which needs no privilege.
        if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn raise_open_files_limit() -> std::io::Result<()> {
    Err(std::io::Error::other("only Linux is supported"))
}

pub struct HeraldProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl HeraldProcess {
    /// `herald serve` (the binary `herald_bin`) on `db_url`, with `env` beside
    /// `herald_env` (`--herald-env`; and over it), logging to `log` in `out_dir`.
    pub async fn start(
        herald_bin: &Path,
        out_dir: &Path,
        herald_env: &[(String, String)],
        db_url: &str,
        env: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        std::fs::create_dir_all(out_dir)?;
        let log_path = out_dir.join(log);
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(std::fs::canonicalize(herald_bin)?);
        // Only what is set here: no inherited HERALD_* and no developer's .env (herald
        // looks for one in its working directory and above).
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", db_url)
            .env("HERALD_LISTEN", addr.to_string())
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in herald_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", herald_bin.display()))?;
        let mut process = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
                && r.status().is_success()
            {
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("herald exited with {status}; see {}", log_path.display());
            }
            if Instant::now() > deadline {
                process.stop();
                bail!("herald did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Linux resets a process's peak RSS (VmHWM) when 5 is written to its clear_refs.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    round(kb / 1024.0)
}
