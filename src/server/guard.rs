//! Who may use the bridge. Any web page the user visits can send a "simple" cross-origin
//! POST to `127.0.0.1`, and a DNS-rebinding page can even read the answers: both would spend
//! the pool. So, on every route:
//!
//! - on a loopback listener, the `Host` must be a loopback name or address (or listed in
//!   `allowed_hosts`): a rebinding page's requests carry its own host name;
//! - a request with an `Origin` (only browsers send one) must come from `allowed_origins`
//!   (none by default); only then are CORS headers sent, so no other page can read answers.
//!   The bridge's own origin (the admitted Host) is allowed too: its live page posts resets.

use http::{HeaderMap, HeaderValue, Method, Uri, header};

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Host(String),
    Origin(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Host(_) => "forbidden_host",
            Self::Origin(_) => "forbidden_origin",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Host(host) => format!(
                "forbidden_host: Host {host:?} is not a loopback name or address; list it in \
                 allowed_hosts to serve it"
            ),
            Self::Origin(origin) => format!(
                "forbidden_origin: requests from web pages (Origin {origin:?}) are refused; list \
                 the origin in allowed_origins to allow it"
            ),
        }
    }
}

/// The configured exceptions.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Host names served besides loopback ones, without ports (compared ignoring case).
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may call the bridge, as browsers send them (`https://app.example`).
    pub allowed_origins: Vec<String>,
}

impl Guard {
    /// Admits a request to a listener (`loopback` or not), returning the origin to send
    /// CORS headers for (if it has an allowed one), or refuses it.
    pub fn admit<'a>(
        &self,
        loopback: bool,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Result<Option<&'a HeaderValue>, Refusal> {
        if loopback
            && let Some(host) = host_of(uri, headers)
            && !is_loopback_host(host)
            && !self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            return Err(Refusal::Host(shortened(host)));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let text = origin.to_str().unwrap_or_default();
        // The bridge's own page (`/_aibridge/`): browsers send `Origin` on its POSTs. Its
        // origin is the Host just admitted, so a rebinding page (another Host) is still
        // refused; being same-origin, it needs no CORS headers.
        if is_own_origin(text, uri, headers) {
            return Ok(None);
        }
        if self.allowed_origins.iter().any(|allowed| allowed == text) {
            Ok(Some(origin))
        } else {
            Err(Refusal::Origin(shortened(text)))
        }
    }
}

/// The host a request names, without its port: HTTP/2's `:authority`, else the `Host`
/// header. `None` when it names none (an HTTP/1.0 client; no browser omits it).
fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let authority = authority_of(uri, headers)?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        // A port is the digits after the last colon: found from the end, byte by byte.
        None => {
            let colon = authority.bytes().rposition(|byte| byte == b':');
            colon.map_or(authority, |colon| &authority[..colon])
        }
    };
    Some(host.strip_suffix('.').unwrap_or(host))
}

/// The authority a request names, port and all: HTTP/2's `:authority`, else the `Host`
/// header.
fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => headers.get(header::HOST)?.to_str().ok(),
    }
}

/// Whether `origin` is `http://` or `https://` followed by the authority the request names.
fn is_own_origin(origin: &str, uri: &Uri, headers: &HeaderMap) -> bool {
    let Some(authority) = authority_of(uri, headers).filter(|authority| !authority.is_empty())
    else {
        return false;
    };
    let named = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    named.is_some_and(|named| named.eq_ignore_ascii_case(authority))
}

fn is_loopback_host(host: &str) -> bool {
    // The hosts clients send almost always, before any parsing.
    if host == "127.0.0.1" || host == "localhost" || host == "::1" {
        return true;
    }
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Header values echoed in an error are cut short.
fn shortened(text: &str) -> String {
    text.chars().take(100).collect()
}

/// Whether a request is a CORS preflight (which the bridge answers itself).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// CORS headers for an allowed origin, on an answer or a preflight.
pub fn allow_origin(response: &mut HeaderMap, origin: &HeaderValue, request: &HeaderMap) {
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(method) = request.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        response.insert(header::ACCESS_CONTROL_ALLOW_METHODS, method.clone());
        if let Some(names) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            response.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, names.clone());
        }
        response.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, pairs: &[(&'static str, &str)]) -> (Uri, HeaderMap) {
        let headers = pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    value.parse().unwrap(),
                )
            })
            .collect();
        (uri.parse().unwrap(), headers)
    }

    fn guard() -> Guard {
        Guard {
            allowed_hosts: vec!["Bridge.Internal".to_owned()],
            allowed_origins: vec!["https://app.example".to_owned()],
        }
    }

    #[test]
    fn loopback_hosts_and_listed_ones_are_served() {
        for host in [
            "127.0.0.1:8787",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8787",
            "127.0.0.2",
            "bridge.internal:8787",
        ] {
            let (uri, headers) = request("/anthropic/v1/messages", &[("host", host)]);
            assert_eq!(guard().admit(true, &uri, &headers), Ok(None), "{host}");
        }
        let (uri, headers) = request("/x", &[]);
        assert_eq!(guard().admit(true, &uri, &headers), Ok(None), "no Host");
    }

    #[test]
    fn a_rebinding_host_is_refused_on_loopback_only() {
        for host in [
            "evil.example:8787",
            "127.0.0.1.evil.example",
            "[::2]:1",
            "0.0.0.0",
        ] {
            let (uri, headers) = request("/x", &[("host", host)]);
            let refusal = guard().admit(true, &uri, &headers).unwrap_err();
            assert_eq!(refusal.code(), "forbidden_host", "{host}");
            assert!(refusal.message().contains("allowed_hosts"));
        }
        let (uri, headers) = request("http://evil.example/x", &[]);
        assert!(
            guard().admit(true, &uri, &headers).is_err(),
            "HTTP/2 authority"
        );
        let (uri, headers) = request("/x", &[("host", "bridge.example")]);
        assert_eq!(
            guard().admit(false, &uri, &headers),
            Ok(None),
            "not on loopback"
        );
    }

    #[test]
    fn the_bridges_own_pages_may_post_to_it() {
        for (host, origin) in [
            ("127.0.0.1:8787", "http://127.0.0.1:8787"),
            ("localhost:8787", "http://LOCALHOST:8787"),
            ("[::1]:8787", "http://[::1]:8787"),
        ] {
            let (uri, headers) = request(
                "/_aibridge/pool/reset",
                &[("host", host), ("origin", origin)],
            );
            assert_eq!(guard().admit(true, &uri, &headers), Ok(None), "{origin}");
        }
        for (host, origin) in [
            ("127.0.0.1:8787", "http://127.0.0.1:9999"),
            ("127.0.0.1:8787", "http://127.0.0.1:8787.evil.example"),
            ("127.0.0.1:8787", "null"),
            ("127.0.0.1:8787", "ftp://127.0.0.1:8787"),
            ("evil.example:8787", "http://evil.example:8787"),
        ] {
            let (uri, headers) = request(
                "/_aibridge/pool/reset",
                &[("host", host), ("origin", origin)],
            );
            assert!(
                guard().admit(true, &uri, &headers).is_err(),
                "{host} {origin}"
            );
        }
    }

    #[test]
    fn origins_must_be_listed() {
        let (uri, headers) = request(
            "/x",
            &[("host", "127.0.0.1"), ("origin", "https://app.example")],
        );
        assert_eq!(
            guard().admit(true, &uri, &headers).unwrap().unwrap(),
            "https://app.example"
        );
        for origin in ["https://evil.example", "null", "https://app.example.evil"] {
            let (uri, headers) = request("/x", &[("host", "127.0.0.1"), ("origin", origin)]);
            let refusal = guard().admit(false, &uri, &headers).unwrap_err();
            assert_eq!(refusal, Refusal::Origin(origin.to_owned()));
        }
    }
}
