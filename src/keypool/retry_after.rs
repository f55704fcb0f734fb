//! How long a rate-limited key should rest, read from the 429 response's headers.
//!
//! Sources in order: `retry-after-ms`, `Retry-After` (seconds or an HTTP date), then the
//! providers' own reset headers. A zero, negative, past or unparsable value falls through to
//! the next source, so one garbage header never turns into a zero cooldown.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The cooldown the headers ask for, or `None` when no header gives a usable one.
pub fn cooldown_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after_ms(headers)
        .or_else(|| retry_after(headers, now))
        .or_else(|| latest_exhausted_reset(headers, now))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn positive(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

fn retry_after_ms(headers: &HeaderMap) -> Option<Duration> {
    let millis: f64 = header(headers, "retry-after-ms")?.parse().ok()?;
    if !millis.is_finite() || millis <= 0.0 {
        return None;
    }
    positive(Duration::try_from_secs_f64(millis / 1000.0).ok()?)
}

fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = header(headers, "retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return positive(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    positive(at.duration_since(now).ok()?)
}

/// The rate-limit budgets a provider reports on every answer: the header that says how
/// much is left, and the one that says when it refills.
const ANTHROPIC_BUDGETS: [(&str, &str); 4] = [
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];
const OPENAI_BUDGETS: [(&str, &str); 2] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
];

/// The latest reset among the limits that are used up (`remaining` is 0). Anthropic gives
/// the reset as an RFC 3339 time, OpenAI as a duration (`1s`, `6m0s`, `20ms`).
fn latest_exhausted_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let anthropic = ANTHROPIC_BUDGETS
        .iter()
        .filter(|(remaining, _)| is_zero(header(headers, remaining)))
        .filter_map(|(_, reset)| {
            let at = humantime::parse_rfc3339_weak(header(headers, reset)?).ok()?;
            at.duration_since(now).ok()
        });
    let openai = OPENAI_BUDGETS
        .iter()
        .filter(|(remaining, _)| is_zero(header(headers, remaining)))
        .filter_map(|(_, reset)| humantime::parse_duration(header(headers, reset)?).ok());
    anthropic.chain(openai).filter_map(positive).max()
}

/// Whether an answer says one of its rate-limit budgets is used up. Every successful answer
/// is checked, so this is one pass over the names, with no lookup by name (each of which
/// would parse and hash it) and no clock read.
pub fn budget_spent(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        let name = name.as_str();
        let remaining = (name.starts_with("anthropic-ratelimit-") && name.ends_with("-remaining"))
            || name.starts_with("x-ratelimit-remaining-");
        remaining
            && value
                .to_str()
                .is_ok_and(|value| is_zero(Some(value.trim())))
    })
}

/// For a successful answer: how long until a budget that this answer used up refills, so
/// the key can rest without paying for a 429 first. `None` when every budget has some left
/// (or the answer reports none).
pub fn spent_budget_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if !budget_spent(headers) {
        return None;
    }
    latest_exhausted_reset(headers, now)
}

fn is_zero(value: Option<&str>) -> bool {
    value.and_then(|v| v.parse::<u64>().ok()) == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NOW_SECS: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn cooldown(pairs: &[(&str, &str)]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        cooldown_from_headers(&headers, now())
    }

    #[test]
    fn retry_after_ms_is_float_milliseconds_and_wins() {
        assert_eq!(
            cooldown(&[("retry-after-ms", "1500.5"), ("retry-after", "30")]),
            Some(Duration::from_micros(1_500_500))
        );
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            cooldown(&[("retry-after", "30")]),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let at = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(
            cooldown(&[("retry-after", &at)]),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn zero_negative_past_and_garbage_fall_through() {
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
        for bad in ["0", "-5", "soon", "NaN", past.as_str()] {
            assert_eq!(
                cooldown(&[
                    ("retry-after-ms", bad),
                    ("retry-after", bad),
                    ("retry-after", "7")
                ]),
                Some(Duration::from_secs(7)),
                "{bad}"
            );
            assert_eq!(cooldown(&[("retry-after", bad)]), None, "{bad}");
        }
        assert_eq!(cooldown(&[("retry-after-ms", "inf")]), None);
    }

    #[test]
    fn anthropic_reset_uses_latest_exhausted_limit() {
        let reset =
            |secs: u64| humantime::format_rfc3339(now() + Duration::from_secs(secs)).to_string();
        let (r20, r40, r90) = (reset(20), reset(40), reset(90));
        let got = cooldown(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", &r20),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", &r40),
            // Not exhausted, so its later reset does not count.
            ("anthropic-ratelimit-output-tokens-remaining", "100"),
            ("anthropic-ratelimit-output-tokens-reset", &r90),
        ]);
        assert_eq!(got, Some(Duration::from_secs(40)));
    }

    #[test]
    fn openai_reset_durations() {
        let got = cooldown(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(got, Some(Duration::from_secs(360)));
        let got = cooldown(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "1.5s"),
        ]);
        assert_eq!(got, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn reset_headers_without_exhausted_limit_give_nothing() {
        assert_eq!(
            cooldown(&[
                ("x-ratelimit-remaining-requests", "3"),
                ("x-ratelimit-reset-requests", "1s")
            ]),
            None
        );
    }

    #[test]
    fn a_spent_budget_on_a_success_names_its_reset() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            headers
        };
        let reset_at = humantime::format_rfc3339_seconds(now() + Duration::from_secs(41));
        for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
            let spent = headers(&[
                (&format!("anthropic-ratelimit-{limit}-remaining"), "0"),
                (
                    &format!("anthropic-ratelimit-{limit}-reset"),
                    &reset_at.to_string(),
                ),
            ]);
            assert_eq!(
                spent_budget_reset(&spent, now()),
                Some(Duration::from_secs(41)),
                "{limit}"
            );
        }
        for limit in ["requests", "tokens"] {
            let spent = headers(&[
                (&format!("x-ratelimit-remaining-{limit}"), "0"),
                (&format!("x-ratelimit-reset-{limit}"), "6m0s"),
            ]);
            assert_eq!(
                spent_budget_reset(&spent, now()),
                Some(Duration::from_secs(360)),
                "{limit}"
            );
        }
        let left = headers(&[
            ("x-ratelimit-remaining-requests", "12"),
            ("x-ratelimit-reset-requests", "6m0s"),
        ]);
        assert_eq!(spent_budget_reset(&left, now()), None);
        assert_eq!(spent_budget_reset(&HeaderMap::new(), now()), None);
        let no_reset = headers(&[("x-ratelimit-remaining-tokens", "0")]);
        assert_eq!(spent_budget_reset(&no_reset, now()), None);
    }
}
