//! What decides which endpoints a message reaches, beyond its application: the event-type
//! patterns an endpoint subscribes to, the channels of a message and of an endpoint, and an
//! endpoint's payload filter. `herald.enqueue` (migration 0023) applies them; these checks
//! keep what it is given within what it was written for.

use super::EventType;

/// Most event types (or patterns) one endpoint subscribes to.
pub const MAX_EVENT_TYPES: usize = 100;
/// Most channels one message carries.
pub const MAX_MESSAGE_CHANNELS: usize = 10;
/// Most channels one endpoint subscribes to.
pub const MAX_ENDPOINT_CHANNELS: usize = 100;
/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Largest filter, as JSON text: a routing rule, not a document.
pub const MAX_FILTER_BYTES: usize = 4096;

/// An event type an endpoint subscribes to: a type (`invoice.paid`), a prefix and `.*`
/// (`invoice.*`: every type that starts with `invoice.`, at any depth), or `*` (every type).
pub fn event_type_pattern(s: &str) -> Result<String, String> {
    if s == "*" {
        return Ok(s.to_owned());
    }
    let name = s.strip_suffix(".*").unwrap_or(s);
    if name.contains('*') {
        return Err(format!(
            "event type {s:?}: '*' may only be the whole pattern or follow the last '.' \
             (invoice.*)"
        ));
    }
    EventType::parse(name).map_err(|e| format!("event type {s:?}: {e}"))?;
    Ok(s.to_owned())
}

/// An endpoint's event types: each a pattern, at most [`MAX_EVENT_TYPES`].
pub fn event_type_patterns(types: &[String]) -> Result<Vec<String>, String> {
    if types.len() > MAX_EVENT_TYPES {
        return Err(format!(
            "an endpoint subscribes to at most {MAX_EVENT_TYPES} event types"
        ));
    }
    types.iter().map(|t| event_type_pattern(t)).collect()
}

/// Channels, of a message (at most `max`) or of an endpoint: 1 to 128 characters of
/// `[A-Za-z0-9_.:-]` each, given once.
pub fn channels(channels: &[String], max: usize) -> Result<Vec<String>, String> {
    if channels.len() > max {
        return Err(format!("at most {max} channels"));
    }
    let mut out: Vec<String> = Vec::with_capacity(channels.len());
    for c in channels {
        if c.is_empty() || c.len() > MAX_CHANNEL_LEN {
            return Err(format!(
                "a channel must be 1 to {MAX_CHANNEL_LEN} characters long"
            ));
        }
        if let Some(bad) = c
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | ':' | '-')))
        {
            return Err(format!(
                "channel {c:?} may only contain A-Z, a-z, 0-9, '_', '.', ':' and '-' \
                 (found {bad:?})"
            ));
        }
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    Ok(out)
}

/// An endpoint's payload filter: a JSON object the payload must contain, in PostgreSQL's
/// `@>` sense (`{"region": "eu"}` matches any payload whose `region` is `"eu"`; nested
/// objects match their subsets; an array matches an array holding those elements).
pub fn filter(value: &serde_json::Value) -> Result<(), String> {
    if !value.is_object() {
        return Err("filter must be a JSON object (or null for none)".into());
    }
    let len = value.to_string().len();
    if len > MAX_FILTER_BYTES {
        return Err(format!(
            "filter is {len} bytes as JSON; at most {MAX_FILTER_BYTES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_types_prefixes_with_a_star_or_a_star() {
        for ok in ["invoice.paid", "invoice.*", "a.b.*", "*"] {
            assert_eq!(event_type_pattern(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "invoice*",
            "*.paid",
            "invoice.*.paid",
            ".*",
            "",
            "invoice.**",
            "a b.*",
        ] {
            assert!(event_type_pattern(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_EVENT_TYPES).map(|i| format!("t{i}")).collect();
        assert!(event_type_patterns(&many).is_err());
    }

    #[test]
    fn channels_are_bounded_names_given_once() {
        let given = ["eu".to_owned(), "acct:42".to_owned(), "eu".to_owned()];
        assert_eq!(channels(&given, 10).unwrap(), ["eu", "acct:42"]);
        assert!(channels(&["*".to_owned()], 10).is_err());
        assert!(channels(&[String::new()], 10).is_err());
        assert!(channels(&["a".repeat(MAX_CHANNEL_LEN + 1)], 10).is_err());
        assert!(channels(&["a".to_owned(), "b".to_owned()], 1).is_err());
    }

    #[test]
    fn a_filter_is_a_small_object() {
        assert!(filter(&serde_json::json!({"region": "eu"})).is_ok());
        assert!(filter(&serde_json::json!(["eu"])).is_err());
        assert!(filter(&serde_json::json!("eu")).is_err());
        let big = "x".repeat(MAX_FILTER_BYTES);
        assert!(filter(&serde_json::json!({ "k": big })).is_err());
    }
}
