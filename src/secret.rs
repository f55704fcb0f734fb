//! API keys as a secret type: the full key is reachable only through `expose`, so it cannot
//! slip into logs, errors or JSON by way of `Debug`, `Display` or `Serialize`.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A provider API key (or a caller's credential). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }

    /// The full key, for the one place that needs it: the upstream auth header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// A masked hint that identifies a key to a person without revealing it:
    /// 4 chars each end for keys of 20+ chars, 2 for 10+, 1 for 5+, nothing below. A
    /// credential of several parts (AWS: `ACCESS_KEY_ID:SECRET[:TOKEN][@REGION]`) is known by
    /// its first part, masked, and its region: `AKIA...WXYZ@us-east-1`.
    pub fn hint(&self) -> String {
        let (body, region) = match self.0.rsplit_once('@') {
            Some((body, region)) if looks_like_region(region) => (body, Some(region)),
            _ => (&*self.0, None),
        };
        let first = body.split(':').next().unwrap_or_default();
        let shown = mask(first);
        match region {
            Some(region) => format!("{shown}@{region}"),
            None => shown,
        }
    }

    /// A stable identifier for state files and admin APIs: the first 16 hex chars of SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..8])
    }
}

/// A short lower-case name like `us-east-1`: shown as is, since it cannot be a secret.
fn looks_like_region(text: &str) -> bool {
    (3..=32).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// Masks any secret string by the rule of [`ApiKey::hint`].
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let shown = match chars.len() {
        20.. => 4,
        10.. => 2,
        5.. => 1,
        _ => return "****".to_owned(),
    };
    let head: String = chars[..shown].iter().collect();
    let tail: String = chars[chars.len() - shown..].iter().collect();
    format!("{head}...{tail}")
}

/// A key selector as it may be shown back: a fingerprint (16 hex digits) or a masked hint
/// (`sk-a...efgh`) as given, anything else (a full key, say) masked.
pub fn shown_selector(selector: &str) -> String {
    let fingerprint = selector.len() == 16 && selector.bytes().all(|byte| byte.is_ascii_hexdigit());
    if fingerprint || selector.contains("...") {
        selector.to_owned()
    } else {
        mask(selector)
    }
}

/// Whether `selector` names `fingerprint`: given as the fingerprint itself, or as the full
/// key whose fingerprint it is.
pub fn selects_fingerprint(selector: &str, fingerprint: &str) -> bool {
    selector == fingerprint || ApiKey::new(selector).fingerprint() == fingerprint
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.hint())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hint())
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hint())
    }
}

/// A Redis URL, which may carry a password: shown with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(url::Url);

#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("not a URL ({0})")]
    Syntax(url::ParseError),
    #[error("the scheme must be redis:// or rediss://, not {0}://")]
    Scheme(String),
    #[error("no host")]
    NoHost,
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<Self, RedisUrlError> {
        let url = url::Url::parse(text).map_err(RedisUrlError::Syntax)?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(RedisUrlError::Scheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(RedisUrlError::NoHost);
        }
        Ok(Self(url))
    }

    /// The URL with its password, for the one place that needs it: the Redis client.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Cannot fail: the URL has a host, or it would not have parsed.
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_hide_their_password() {
        let url = RedisUrl::parse("redis://user:hunter2secret@127.0.0.1:6379/2").unwrap();
        assert_eq!(url.to_string(), "redis://user:***@127.0.0.1:6379/2");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.expose().contains("hunter2secret"));
        assert!(RedisUrl::parse("rediss://cache.internal:6380").is_ok());
        let wrong = RedisUrl::parse("http://127.0.0.1:6379").unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "the scheme must be redis:// or rediss://, not http://"
        );
        assert!(RedisUrl::parse("127.0.0.1:6379").is_err());
    }

    #[test]
    fn selectors_are_shown_only_when_they_reveal_nothing() {
        assert_eq!(shown_selector("0123456789abcdef"), "0123456789abcdef");
        assert_eq!(shown_selector("sk-a...efgh"), "sk-a...efgh");
        assert_eq!(
            shown_selector("sk-ant-full-secret-key-0000001"),
            "sk-a...0001"
        );
        let key = ApiKey::new("sk-ant-full-secret-key-0000001");
        assert!(selects_fingerprint(key.expose(), &key.fingerprint()));
        assert!(selects_fingerprint(&key.fingerprint(), &key.fingerprint()));
        assert!(!selects_fingerprint("sk-a...0001", &key.fingerprint()));
    }

    #[test]
    fn hint_shows_four_chars_each_end_for_long_keys() {
        let key = ApiKey::new("sk-abcdefghijklmnopqrstuvwxyzefgh");
        assert_eq!(key.hint(), "sk-a...efgh");
    }

    #[test]
    fn an_aws_credential_is_known_by_its_key_id_and_region() {
        let pair = ApiKey::new("AKIAMOCKALPHA0000001:mock/secret+alpha/0001:token==@us-east-1");
        assert_eq!(pair.hint(), "AKIA...0001@us-east-1");
        let api_key = ApiKey::new("ABSKmockapikeycharlie0000000003");
        assert_eq!(api_key.hint(), "ABSK...0003");
        // Not a region: the whole text is masked.
        assert_eq!(
            ApiKey::new("sk-abc@DEF-secret-0123456789").hint(),
            "sk-a...6789"
        );
    }

    #[test]
    fn hint_width_follows_key_length() {
        assert_eq!(mask("0123456789abcdefghij"), "0123...ghij");
        assert_eq!(mask("0123456789abcdefghi"), "01...hi");
        assert_eq!(mask("0123456789"), "01...89");
        assert_eq!(mask("012345678"), "0...8");
        assert_eq!(mask("01234"), "0...4");
        assert_eq!(mask("0123"), "****");
        assert_eq!(mask(""), "****");
    }

    #[test]
    fn hint_counts_chars_not_bytes() {
        assert_eq!(mask("ééééééééééééééééééééé"), "éééé...éééé");
    }

    #[test]
    fn debug_display_and_json_never_show_the_key() {
        let key = ApiKey::new("sk-live-0123456789abcdef0123");
        let rendered = [
            format!("{key:?}"),
            format!("{key}"),
            serde_json::to_string(&key).unwrap(),
        ];
        for text in rendered {
            assert!(!text.contains("0123456789abcdef"), "{text}");
            assert!(text.contains("sk-l...0123"), "{text}");
        }
    }

    #[test]
    fn fingerprint_is_sixteen_hex_chars_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(ApiKey::new("abc").fingerprint(), "ba7816bf8f01cfea");
    }
}
