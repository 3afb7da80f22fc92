//! The one outbound HTTP client: pooled keep-alive connections, no redirects, no proxies,
//! no automatic retries, and (unless the operator allows it) no private targets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::is_public_ip;

/// The error a refused address surfaces as, found again in the error chain to record the
/// attempt as `blocked`.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to non-public addresses, which this server does not call")]
pub struct BlockedTarget(pub String);

/// Resolves names with the system resolver, then drops every non-public address. The
/// connector only ever connects to what this returns, so the check covers the address
/// actually used (a DNS answer that changes between check and use cannot slip through).
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedTarget(host)) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

pub fn build(request_timeout: Duration, allow_private: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64);
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
    }
    Ok(builder.build()?)
}
