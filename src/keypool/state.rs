//! A key's health as values: its state, why it is out, and what an answer does to it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a key was taken out of service until it is rechecked or reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// The provider answered 401.
    Unauthorized,
    /// The provider answered 403.
    Forbidden,
    /// The account's quota or credit is used up (recognised from the error body).
    Quota,
    /// The credential's session has expired (AWS `ExpiredTokenException`).
    Expired,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Quota => "quota",
            Self::Expired => "expired",
        }
    }

    /// The reason [`DisableReason::as_str`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    const ALL: [Self; 4] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::Quota,
        Self::Expired,
    ];
}

/// A key's health. A cooling key whose deadline has passed reads as `Available`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Available,
    /// Rate-limited until the deadline (Unix milliseconds).
    Cooling {
        until_ms: u64,
    },
    Disabled(DisableReason),
}

/// Which state a key is in, without its deadline or reason: what reports, logs and metrics
/// show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Available,
    Cooling,
    Disabled,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Cooling => "cooling",
            Self::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key is out of service: a rate limit, or the reason it was disabled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateReason {
    #[default]
    RateLimited,
    Unauthorized,
    Forbidden,
    Quota,
    Expired,
    /// The key's account may not use one model (Bedrock); it serves the others.
    NoModelAccess,
}

impl StateReason {
    const ALL: [Self; 6] = [
        Self::RateLimited,
        Self::Unauthorized,
        Self::Forbidden,
        Self::Quota,
        Self::Expired,
        Self::NoModelAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Quota => "quota",
            Self::Expired => "expired",
            Self::NoModelAccess => "no_model_access",
        }
    }

    /// A small number for an atomic; [`StateReason::from_code`] reads it back.
    pub(super) fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0) as u8
    }

    pub(super) fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or_default()
    }

    pub fn is_rate_limited(&self) -> bool {
        *self == Self::RateLimited
    }
}

impl From<DisableReason> for StateReason {
    fn from(reason: DisableReason) -> Self {
        match reason {
            DisableReason::Unauthorized => Self::Unauthorized,
            DisableReason::Forbidden => Self::Forbidden,
            DisableReason::Quota => Self::Quota,
            DisableReason::Expired => Self::Expired,
        }
    }
}

impl KeyState {
    pub fn kind(self) -> StateKind {
        match self {
            Self::Available => StateKind::Available,
            Self::Cooling { .. } => StateKind::Cooling,
            Self::Disabled(_) => StateKind::Disabled,
        }
    }

    /// The stronger of two states, the rule every merge of marks follows: disabled beats
    /// cooling, the later deadline beats the earlier, and available changes nothing.
    pub fn stronger(self, other: Self) -> Self {
        match (self, other) {
            (Self::Disabled(_), _) | (_, Self::Available) => self,
            (_, Self::Disabled(_)) => other,
            (Self::Cooling { until_ms: a }, Self::Cooling { until_ms: b }) => {
                Self::Cooling { until_ms: a.max(b) }
            }
            (Self::Available, Self::Cooling { .. }) => other,
        }
    }

    /// The state's name, as logs and metric labels show it.
    pub fn name(self) -> &'static str {
        self.kind().as_str()
    }

    pub fn reason(self) -> Option<StateReason> {
        match self {
            Self::Available => None,
            Self::Cooling { .. } => Some(StateReason::RateLimited),
            Self::Disabled(reason) => Some(reason.into()),
        }
    }

    /// Time left on a cooldown at `now_ms` (zero when not cooling).
    pub fn remaining(self, now_ms: u64) -> Duration {
        match self {
            Self::Cooling { until_ms } => Duration::from_millis(until_ms.saturating_sub(now_ms)),
            _ => Duration::ZERO,
        }
    }

    /// The state as it reads at `now_ms`: an ended cooldown is available.
    pub fn settle(self, now_ms: u64) -> Self {
        match self {
            Self::Cooling { until_ms } if until_ms <= now_ms => Self::Available,
            other => other,
        }
    }

    // One word per key: the top two bits hold the kind, the rest the deadline (cooling) or
    // the reason's place in `DisableReason::ALL` (disabled).
    const KIND_SHIFT: u32 = 62;
    const DEADLINE_MASK: u64 = (1 << Self::KIND_SHIFT) - 1;

    pub(super) fn encode(self) -> u64 {
        match self {
            Self::Available => 0,
            Self::Cooling { until_ms } => 1 << Self::KIND_SHIFT | (until_ms & Self::DEADLINE_MASK),
            Self::Disabled(reason) => {
                let place = DisableReason::ALL
                    .iter()
                    .position(|known| *known == reason)
                    .expect("every reason is listed");
                2 << Self::KIND_SHIFT | place as u64
            }
        }
    }

    pub(super) fn decode(word: u64) -> Self {
        match word >> Self::KIND_SHIFT {
            0 => Self::Available,
            1 => Self::Cooling {
                until_ms: word & Self::DEADLINE_MASK,
            },
            _ => {
                let place = (word & Self::DEADLINE_MASK) as usize;
                Self::Disabled(DisableReason::ALL[place.min(DisableReason::ALL.len() - 1)])
            }
        }
    }
}

/// What an upstream answer does to the key that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Cool(Duration),
    Disable(DisableReason),
}

/// The result of applying a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkOutcome {
    /// The key's state after the mark; for a cooldown of one model, that model's.
    pub state: KeyState,
    /// Whether the state's kind changed (available -> cooling, cooling -> disabled, ...);
    /// extending a cooldown is not a change, so logs and counters fire once per change.
    pub changed: bool,
    /// Whether the mark is a cooldown of the request's model alone.
    pub per_model: bool,
    /// Why the model is out, for a mark of one model: a rate limit unless said otherwise.
    pub model_reason: StateReason,
    /// The clock's reading the mark was made at (Unix ms).
    pub at_ms: u64,
}
