//! Header rules of forwarding: what describes one connection rather than the message.

use http::{HeaderMap, HeaderValue, header};

/// Hop-by-hop headers describe one connection, not the message; `host` and `upgrade` are
/// the next hop's to set.
const DROPPED_WHEN_FORWARDING: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "host",
    "upgrade",
];

/// Drops hop-by-hop headers (and those `Connection` names) and `host`, which the HTTP client
/// sets for the next hop. `content-length` stays when it states `body_length`, the length
/// the message is forwarded with, so the client need not write it again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, body_length: Option<u64>) {
    // One pass notes what is present, as a removal is a hash lookup and most are absent.
    let mut present = 0u16;
    let (mut lengths, mut length_is_right) = (0, false);
    for (name, value) in headers.iter() {
        let name = name.as_str();
        if let Some(index) = DROPPED_WHEN_FORWARDING
            .iter()
            .position(|&dropped| dropped == name)
        {
            present |= 1 << index;
        }
        if name == "content-length" {
            lengths += 1;
            length_is_right = body_length.is_some_and(|length| states(value, length));
        }
    }
    // `connection` comes first in the list.
    let has_connection = present & 1 != 0;
    let named_by_connection: Vec<String> = if has_connection {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    for (index, name) in DROPPED_WHEN_FORWARDING.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(*name);
        }
    }
    for name in named_by_connection {
        headers.remove(name.as_str());
    }
    // Two lengths, even equal ones, are not passed on.
    if lengths > 0 && !(lengths == 1 && length_is_right) {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Whether a `content-length` value is exactly `length`, in plain digits.
fn states(value: &HeaderValue, length: u64) -> bool {
    let digits = value.as_bytes();
    !digits.is_empty()
        && digits.iter().try_fold(0u64, |number, &digit| {
            let digit = digit.checked_sub(b'0').filter(|digit| *digit <= 9)?;
            number.checked_mul(10)?.checked_add(u64::from(digit))
        }) == Some(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "127.0.0.1:8787"),
            ("content-length", "12"),
            ("anthropic-version", "2023-06-01"),
            ("user-agent", "sdk/1.0"),
        ] {
            headers.insert(HeaderName::from_static(name), value.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers, None);
        let mut names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["anthropic-version", "user-agent"]);
    }

    #[test]
    fn content_length_stays_only_when_it_states_the_forwarded_length() {
        let kept = |values: &[&str], length: Option<u64>| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::CONTENT_LENGTH, value.parse().unwrap());
            }
            strip_hop_by_hop(&mut headers, length);
            headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|value| value.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&["12"], Some(12)), ["12"]);
        assert!(kept(&["12"], Some(11)).is_empty());
        assert!(kept(&["12"], None).is_empty());
        assert!(kept(&["+12"], Some(12)).is_empty());
        assert!(kept(&[""], Some(0)).is_empty());
        assert!(kept(&["99999999999999999999"], Some(u64::MAX)).is_empty());
        assert_eq!(
            kept(&["18446744073709551615"], Some(u64::MAX)),
            ["18446744073709551615"]
        );
        assert!(kept(&["12", "12"], Some(12)).is_empty());
        assert!(kept(&[], Some(0)).is_empty());
    }
}
