//! How many inbound connections the process serves at once by default: what its open-files
//! limit leaves once the workers and the database pools have their descriptors.

/// Descriptors kept free for everything but inbound connections: per worker one socket for
/// its request and one for a DNS lookup, the database pools (the shared one, the feed's
/// and the probes'), and files, the listener, the runtime and the logs.
fn reserved_descriptors(worker_concurrency: usize, db_pool_size: usize) -> usize {
    2 * worker_concurrency + db_pool_size + 8 + 64
}

/// What is left of the process's open-files limit once the workers and the database have
/// theirs: accepting more would leave the workers failing their DNS lookups and connects.
/// At least 64, so a low limit still serves something (raise `ulimit -n` then).
pub(super) fn default_max_connections(
    open_files: Option<u64>,
    worker_concurrency: usize,
    db_pool_size: usize,
) -> usize {
    // Unknown (not Unix): a common soft limit.
    let open_files = open_files.unwrap_or(1024).min(1 << 20) as usize;
    open_files
        .saturating_sub(reserved_descriptors(worker_concurrency, db_pool_size))
        .max(64)
}

/// The soft limit on open files (`ulimit -n`), if there is one.
pub(super) fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_connections_leave_descriptors_for_the_workers() {
        // 1024 files, 256 workers, 16 connections: 2 * 256 + 16 + 72 kept back.
        assert_eq!(default_max_connections(Some(1024), 256, 16), 424);
        assert_eq!(
            default_max_connections(Some(1 << 20), 256, 16),
            (1 << 20) - 600
        );
        assert_eq!(default_max_connections(Some(256), 256, 16), 64);
        assert_eq!(default_max_connections(None, 8, 5), 1024 - 93);
    }
}
