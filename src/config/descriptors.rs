//! How many inbound connections the process serves at once by default: what its open-files
//! limit leaves once the workers and the database pools have their descriptors.

/// Descriptors kept free for everything but inbound connections: per worker one socket for
/// its request, one for a DNS lookup and one kept open for the next request to its host
/// (the delivery client keeps as many idle connections per host as there are workers), the
/// database pools (the shared one, the feed's and the probes'), and files, the listener,
/// the runtime and the logs.
fn reserved_descriptors(worker_concurrency: usize, db_pool_size: usize) -> usize {
    3 * worker_concurrency + db_pool_size + 8 + 64
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

/// Raises the soft limit on open files to the hard one, as servers that hold many sockets
/// do (Go's runtime does it for every program): the soft limit is often 1024 while the hard
/// one allows far more. Returns the limits before and after when it raised them.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
            || limit.rlim_cur >= limit.rlim_max
        {
            return None;
        }
        let before = limit.rlim_cur;
        // An unlimited hard limit: as many as the kernel's default `nr_open`.
        limit.rlim_cur = limit.rlim_max.min(1 << 20);
        if limit.rlim_cur <= before {
            return None;
        }
        // SAFETY: setrlimit only reads the struct it is given; a soft limit up to the
        // hard one needs no privilege.
        let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
        ok.then_some((before, limit.rlim_cur))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let raised = raise_open_files_limit();
        let soft = open_files_limit();
        let hard = limit.rlim_max.min(1 << 20);
        assert!(soft.is_none_or(|soft| soft >= hard), "{soft:?} < {hard}");
        if let Some((before, after)) = raised {
            assert!(before < after && after == hard);
        }
    }

    #[test]
    fn inbound_connections_leave_descriptors_for_the_workers() {
        // 1024 files, 256 workers, 16 connections: 3 * 256 + 16 + 72 kept back.
        assert_eq!(default_max_connections(Some(1024), 256, 16), 168);
        assert_eq!(
            default_max_connections(Some(1 << 20), 256, 16),
            (1 << 20) - 856
        );
        assert_eq!(default_max_connections(Some(256), 256, 16), 64);
        assert_eq!(default_max_connections(None, 8, 5), 1024 - 101);
    }
}
