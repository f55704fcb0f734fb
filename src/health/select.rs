//! Finding the one key a person named: by fingerprint, by the full key, or by masked hint.
//! One rule and one set of errors for `pool reset`, the admin reset route and the pool.

use crate::secret::{selects_fingerprint, shown_selector};

/// A key named by hint or fingerprint that names no key, or several. The selector is kept
/// as it may be shown (a full key given as a selector is masked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySelectError {
    #[error("no key matches {0:?}")]
    NoMatch(String),
    #[error("{selector:?} matches {} keys ({}); use a fingerprint", .fingerprints.len(), .fingerprints.join(", "))]
    Ambiguous {
        selector: String,
        fingerprints: Vec<String>,
    },
}

impl KeySelectError {
    pub fn no_match(selector: &str) -> Self {
        Self::NoMatch(shown_selector(selector))
    }
}

/// A key some source knows of: a pool, the config, or shared health.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnownKey {
    pub provider: String,
    pub fingerprint: String,
    pub hint: String,
}

/// The one key among `known` (within `provider`, when given) that `selector` names: the
/// key with that fingerprint (or that is that full key), else the one with that hint. A
/// key known to several sources counts once.
pub fn select_key<'a>(
    known: impl IntoIterator<Item = &'a KnownKey>,
    provider: Option<&str>,
    selector: &str,
) -> Result<&'a KnownKey, KeySelectError> {
    let mut candidates: Vec<&KnownKey> = known
        .into_iter()
        .filter(|key| provider.is_none_or(|wanted| wanted == key.provider))
        .collect();
    candidates.sort_by(|a, b| (&a.provider, &a.fingerprint).cmp(&(&b.provider, &b.fingerprint)));
    candidates.dedup_by(|a, b| a.provider == b.provider && a.fingerprint == b.fingerprint);
    let by_fingerprint: Vec<_> = candidates
        .iter()
        .copied()
        .filter(|key| selects_fingerprint(selector, &key.fingerprint))
        .collect();
    let matches = if by_fingerprint.is_empty() {
        candidates
            .into_iter()
            .filter(|key| key.hint == selector)
            .collect()
    } else {
        by_fingerprint
    };
    match matches.as_slice() {
        [] => Err(KeySelectError::no_match(selector)),
        [one] => Ok(one),
        several => Err(KeySelectError::Ambiguous {
            selector: shown_selector(selector),
            fingerprints: several
                .iter()
                .map(|key| format!("{}:{}", key.provider, key.fingerprint))
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ApiKey;

    fn known(provider: &str, key: &str) -> KnownKey {
        let key = ApiKey::new(key);
        KnownKey {
            provider: provider.into(),
            fingerprint: key.fingerprint(),
            hint: key.hint(),
        }
    }

    #[test]
    fn one_rule_for_every_selector() {
        let a = known("anthropic", "sk-ant-alpha-0000000000000001");
        let b = known("anthropic", "sk-ant-bravo-0000000000000001");
        let c = known("openai", "sk-ant-alpha-0000000000000001");
        let keys = [a.clone(), b.clone(), c.clone(), a.clone()];
        assert_eq!(select_key(&keys, None, &b.fingerprint), Ok(&b));
        assert_eq!(
            select_key(&keys, Some("anthropic"), "sk-ant-alpha-0000000000000001"),
            Ok(&a),
            "a full key selects its fingerprint"
        );
        assert_eq!(select_key(&keys, Some("openai"), "sk-a...0001"), Ok(&c));
        let error = select_key(&keys, None, "sk-a...0001").unwrap_err();
        assert!(
            matches!(&error, KeySelectError::Ambiguous { fingerprints, .. } if fingerprints.len() == 3),
            "{error}"
        );
        assert!(error.to_string().contains("anthropic:"), "{error}");
        let missing = select_key(&keys, None, "sk-ant-unknown-full-secret-9999").unwrap_err();
        assert_eq!(missing.to_string(), "no key matches \"sk-a...9999\"");
    }
}
