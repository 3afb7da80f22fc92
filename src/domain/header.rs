//! Custom headers an endpoint may carry, and the ones it may not.

/// Why a custom header named `name` may not be set, if it may not: Herald sets it itself,
/// or it governs the connection rather than the request (hop-by-hop, RFC 9110 §7.6.1;
/// `expect` changes how the request is sent). Checked when an endpoint is written, and
/// again when a request is sent, for rows stored before a rule existed.
pub fn refused_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-")
        || matches!(lower.as_str(), "content-type" | "content-length" | "host")
    {
        return Some("is set by Herald");
    }
    let hop_by_hop = lower.starts_with("proxy-")
        || matches!(
            lower.as_str(),
            "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "expect"
                | "http2-settings"
        );
    hop_by_hop.then_some("is hop-by-hop or controls the connection; it cannot be set")
}

#[cfg(test)]
mod tests {
    use super::refused_header;

    #[test]
    fn refuses_what_herald_sets_and_what_controls_the_connection() {
        for name in [
            "Webhook-Signature",
            "content-type",
            "Host",
            "TE",
            "Proxy-Authorization",
            "keep-alive",
            "Upgrade",
            "expect",
        ] {
            assert!(refused_header(name).is_some(), "{name}");
        }
        for name in ["authorization", "x-tenant", "x-api-key"] {
            assert_eq!(refused_header(name), None, "{name}");
        }
    }
}
