//! A provider as the walker sees it: where to send, and whose key to send with.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::{InvalidUri, PathAndQuery};
use http::{HeaderMap, Uri};
use tokio::sync::Notify;

use super::FailoverError;
use crate::config::ProviderConfig;
use crate::keypool::{Affinity, Clock, DEFAULT_MAX_SESSIONS, Pool, PoolError};
use crate::provider::bedrock::{AwsCredential, Plane, is_caller_signature};
use crate::provider::{ProviderKind, caller_credential};
use crate::secret::ApiKey;
use crate::transport::Origin;

/// A provider as the walker uses it: where to send, and the keys to send with.
#[derive(Debug)]
pub struct Upstream {
    pub name: std::sync::Arc<str>,
    pub kind: ProviderKind,
    pub base_url: String,
    pub(super) endpoints: Endpoints,
    /// Bedrock: the region credentials that name none sign for.
    pub region: String,
    pub enabled: bool,
    /// Whether a caller's own credential takes the place of the pool.
    pub byok: bool,
    /// A pool was configured, so an empty one waits for keys rather than use callers' own.
    pub expects_keys: bool,
    pub pool: Pool,
    /// The most upstream tries one request makes; `None` = the whole pool.
    pub max_attempts: Option<usize>,
    /// How long `serve` may hold a request, in total, for a key that is about to come back.
    pub max_wait: Duration,
    /// How long a session keeps its key after its last request; `None` = affinity off.
    pub affinity_ttl: Option<Duration>,
    /// Which key each session is on.
    pub sessions: Affinity,
    /// Wakes held requests when a key comes back early (a reset or a revive).
    pub(super) freed: Notify,
}

impl Upstream {
    pub fn from_config(
        config: &ProviderConfig,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Result<Self, PoolError> {
        Ok(Self {
            name: config.name.as_str().into(),
            kind: config.kind,
            base_url: config.base_url.clone(),
            endpoints: Endpoints::of(config),
            region: config
                .region
                .clone()
                .unwrap_or_else(|| crate::provider::bedrock::DEFAULT_REGION.to_owned()),
            enabled: config.enabled,
            byok: config.byok,
            expects_keys: config.expects_keys,
            pool: Pool::new(config.keys.clone(), config.pool, clock)?.with_caps(&config.key_caps),
            max_attempts: config.max_attempts,
            max_wait: config.max_wait,
            affinity_ttl: config.affinity_ttl,
            sessions: Affinity::new(DEFAULT_MAX_SESSIONS),
            freed: Notify::new(),
        })
    }

    /// Tells held requests that a key came back before its cooldown ended.
    pub fn key_freed(&self) {
        self.freed.notify_waiters();
    }

    fn missing_key_hint(&self) -> String {
        if self.expects_keys {
            return format!(
                "providers.{} has a key list, but it is empty; add keys (and reload with SIGHUP)",
                self.name
            );
        }
        if self.kind.api().byok_only() {
            return format!(
                "{} is bring-your-own-key only: send your own token in the Authorization header",
                self.kind
            );
        }
        format!(
            "set providers.{}.keys in the config or {}, or send your own key",
            self.name,
            crate::config::provider_env_var(&self.name, "KEYS")
        )
    }

    /// Picks whose key a request uses. `prefer_caller`: a caller credential, when present,
    /// is used instead of the pool (BYOK). Providers given no pool always use the caller's;
    /// one whose pool came out empty uses nobody's.
    pub fn credentials_for(
        &self,
        headers: &HeaderMap,
        prefer_caller: bool,
    ) -> Result<Credentials, FailoverError> {
        if !self.enabled {
            return Err(FailoverError::ProviderDisabled {
                provider: self.name.to_string(),
            });
        }
        let signs = self.kind.api().signs_requests();
        // The caller's credential only matters when it may be used. A caller's AWS signature
        // is not one: it was made for the bridge's host and cannot be sent on.
        let caller = if prefer_caller || (self.pool.is_empty() && !self.expects_keys) {
            caller_credential(headers).filter(|_| !(signs && is_caller_signature(headers)))
        } else {
            None
        };
        if caller.is_none() && self.pool.is_empty() && signs && is_caller_signature(headers) {
            return Err(FailoverError::NoKeys {
                provider: self.name.to_string(),
                hint: format!(
                    "a request signed with SigV4 cannot be forwarded (its signature is for the \
                     bridge, not AWS): set providers.{}.keys to AWS credentials, or send a \
                     Bedrock API key as Authorization: Bearer",
                    self.name
                ),
            });
        }
        match caller {
            Some(key) => Ok(Credentials::Caller(key)),
            None if !self.pool.is_empty() => Ok(Credentials::Pool),
            None => Err(FailoverError::NoKeys {
                provider: self.name.to_string(),
                hint: self.missing_key_hint(),
            }),
        }
    }
}

/// Whose key a request is sent with.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Walk the pool; caller credentials are removed.
    Pool,
    /// The caller's own key: one attempt, sent unchanged, marking nothing.
    Caller(ApiKey),
}

/// Where a provider's requests go.
#[derive(Debug)]
pub(super) enum Endpoints {
    /// Every request to `base_url`.
    Fixed(Destination),
    /// Bedrock without a `base_url`: each credential's own region, on the runtime or the
    /// control-plane endpoint by path. Built once for every region the pool names; looked
    /// up by the region's name, with nothing allocated per attempt.
    Regional(HashMap<String, RegionEndpoints>),
}

/// One region's two Bedrock endpoints.
#[derive(Debug)]
pub(super) struct RegionEndpoints {
    runtime: Destination,
    control: Destination,
}

impl Endpoints {
    fn of(config: &ProviderConfig) -> Self {
        let Some(default_region) = config.region.as_deref().filter(|_| config.regional) else {
            return Self::Fixed(Destination::parse(&config.base_url));
        };
        let regions = config
            .keys
            .iter()
            .filter_map(|key| AwsCredential::parse(key.expose())?.region)
            .chain([default_region]);
        let mut by_region = HashMap::new();
        for region in regions {
            by_region
                .entry(region.to_owned())
                .or_insert_with(|| RegionEndpoints {
                    runtime: Destination::parse(&Plane::Runtime.endpoint(region)),
                    control: Destination::parse(&Plane::Control.endpoint(region)),
                });
        }
        Self::Regional(by_region)
    }

    /// Where a request for `path` goes in `region`.
    pub(super) fn for_request(&self, region: &str, path: &str) -> Option<&Destination> {
        match self {
            Self::Fixed(destination) => Some(destination),
            Self::Regional(by_region) => {
                let endpoints = by_region.get(region)?;
                Some(match Plane::of(path) {
                    Plane::Runtime => &endpoints.runtime,
                    Plane::Control => &endpoints.control,
                })
            }
        }
    }
}

/// `base_url` split once into what every request's URL shares.
#[derive(Debug)]
pub(super) struct Destination {
    pub(super) origin: Origin,
    /// The base URL's own path, without a trailing slash; usually empty.
    base_path: String,
}

impl Destination {
    pub(super) fn parse(base_url: &str) -> Self {
        let normalized =
            crate::config::normalized_base_url(base_url).expect("the config validated base_url");
        let url = Uri::try_from(normalized).expect("normalized_base_url checked the URL");
        let base_path = url.path().trim_end_matches('/').to_owned();
        Self {
            origin: Origin::of(&url).expect("the base URL is absolute"),
            base_path,
        }
    }

    /// The base URL's path joined with a request's path and query.
    pub(super) fn path_for(&self, path_and_query: &str) -> Result<PathAndQuery, InvalidUri> {
        let separator = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        if self.base_path.is_empty() && separator.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{separator}{path_and_query}", self.base_path))
        }
    }
}
