//! The one outbound HTTP client: pooled keep-alive connections, no redirects, no proxies,
//! no automatic retries, and (unless the operator allows it) no private targets. The guard
//! against private targets lives here whole: the resolver for names, and the check the
//! send makes for IP literals.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::{ip_literal, is_public_ip};

/// The error a refused address surfaces as, found again in the error chain to record the
/// attempt as `blocked`.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to non-public addresses, which this server does not call")]
pub struct BlockedTarget(pub String);

/// Whether the resolver refused the target somewhere in this error's chain.
pub fn is_blocked(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<BlockedTarget>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// How names become addresses: the system resolver in production, a fixed table in tests.
type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

/// Resolves names, then drops every non-public address. The connector only ever connects
/// to what this returns, so the check covers the address actually used (a DNS answer that
/// changes between check and use cannot slip through).
struct PublicOnlyResolver {
    lookup: Lookup,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .await?
                .into_iter()
                .filter(|ip| is_public_ip(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedTarget(host)) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A URL whose host is an IP literal outside the public internet.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address")]
pub struct PrivateLiteral(pub IpAddr);

/// IP literals skip DNS, so the resolver's check never sees them: the send checks them
/// with this first.
pub fn refuse_private_literal(url: &reqwest::Url) -> Result<(), PrivateLiteral> {
    match ip_literal(url).filter(|ip| !is_public_ip(*ip)) {
        Some(ip) => Err(PrivateLiteral(ip)),
        None => Ok(()),
    }
}

/// The client for `concurrency` requests in flight at most.
pub fn build(
    request_timeout: Duration,
    allow_private: bool,
    concurrency: usize,
) -> anyhow::Result<reqwest::Client> {
    build_with(request_timeout, allow_private, concurrency, system_lookup())
}

fn build_with(
    request_timeout: Duration,
    allow_private: bool,
    concurrency: usize,
    lookup: Lookup,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        // As many as can be in flight to one host: a host busier than the idle pool lets
        // each request beyond it open a connection and close it after one use (at 64, a
        // quarter of the benchmark's requests did).
        .pool_max_idle_per_host(concurrency);
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(PublicOnlyResolver { lookup }));
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A DNS under the test's control: each name answers the addresses given.
    fn hosts(table: &[(&str, &[&str])]) -> Lookup {
        let table: HashMap<String, Vec<IpAddr>> = table
            .iter()
            .map(|(name, ips)| {
                let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
                (name.to_string(), ips)
            })
            .collect();
        Arc::new(move |host: String| {
            let answer = table.get(&host).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no such host {host}"))
            });
            Box::pin(async move { answer })
        })
    }

    /// A server on 127.0.0.1 that counts the connections it accepts.
    async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_never_called() {
        let (port, accepted) = counting_listener().await;
        let client = build_with(
            Duration::from_secs(2),
            false,
            4,
            hosts(&[
                ("loopback.test", &["127.0.0.1"]),
                ("loopback6.test", &["::1"]),
                ("private.test", &["10.1.2.3"]),
                ("metadata.test", &["169.254.169.254"]),
                ("mapped.test", &["::ffff:127.0.0.1"]),
                ("cgnat.test", &["100.64.0.1"]),
                (
                    "all-private.test",
                    &["10.0.0.1", "::ffff:127.0.0.1", "fd00::1"],
                ),
            ]),
        )
        .unwrap();
        for name in [
            "loopback.test",
            "loopback6.test",
            "private.test",
            "metadata.test",
            "mapped.test",
            "cgnat.test",
            "all-private.test",
        ] {
            let err = client
                .post(format!("http://{name}:{port}/hook"))
                .send()
                .await
                .expect_err(name);
            assert!(is_blocked(&err), "{name}: {err:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    /// A name with public and private addresses keeps only the public ones: the private
    /// address (where something listens) is never tried, even when the public one fails.
    #[tokio::test]
    async fn a_mixed_answer_is_reduced_to_its_public_addresses() {
        let (port, accepted) = counting_listener().await;
        let client = build_with(
            Duration::from_secs(1),
            false,
            4,
            hosts(&[("mixed.test", &["127.0.0.1", "192.88.99.1"])]),
        )
        .unwrap();
        let err = client
            .post(format!("http://mixed.test:{port}/hook"))
            .send()
            .await
            .expect_err("nothing answers at the public address here");
        assert!(!is_blocked(&err), "a public address remained: {err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0);

        // The listener does count what reaches it.
        let open = build_with(Duration::from_secs(1), true, 4, system_lookup()).unwrap();
        let _ = open.post(format!("http://127.0.0.1:{port}/")).send().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
