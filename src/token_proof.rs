//! Proof that a server knows an access token before a command hands it over.
//!
//! `pool status` and `pool reset` look for a server on the configured listen address. Any
//! local process can listen there while `serve` is down, so the token is not sent on the
//! strength of an answer alone: the command sends a fresh random challenge, and the server
//! answers with an HMAC-SHA256 of it under each of its tokens. Only a server that holds the
//! command's token can answer with the right one, and the token itself never travels.

use http::HeaderName;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::ApiKey;

/// Carries the command's challenge to `/_aibridge/health`.
pub const CHALLENGE_HEADER: HeaderName = HeaderName::from_static("x-aibridge-challenge");
/// Carries the server's proofs back, comma-separated, one per token it holds.
pub const PROOF_HEADER: HeaderName = HeaderName::from_static("x-aibridge-proof");

/// Random bytes in a challenge: as many as the HMAC's output, so none repeats.
const CHALLENGE_BYTES: usize = 32;
/// Tells these MACs apart from any other use of a token.
const CONTEXT: &[u8] = b"aibridge token proof v1:";

/// A fresh challenge, as hex.
pub fn new_challenge() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; CHALLENGE_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Whether a caller's header is a challenge this module made: exact length, hex only, so a
/// hostile one costs nothing and is never echoed.
pub fn is_challenge(text: &[u8]) -> bool {
    text.len() == CHALLENGE_BYTES * 2 && text.iter().all(u8::is_ascii_hexdigit)
}

/// The server's answer to `challenge` for one token.
pub fn prove(token: &ApiKey, challenge: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.expose().as_bytes());
    hex::encode(hmac::sign(&key, &message(challenge)))
}

/// Whether one of the comma-separated `proofs` answers `challenge` for `token` (compared in
/// constant time).
pub fn proves(proofs: &str, token: &ApiKey, challenge: &str) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.expose().as_bytes());
    let message = message(challenge);
    proofs
        .split(',')
        .filter_map(|proof| hex::decode(proof.trim()).ok())
        .any(|tag| hmac::verify(&key, &message, &tag).is_ok())
}

fn message(challenge: &str) -> Vec<u8> {
    [CONTEXT, challenge.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_holder_of_the_token_proves_it() {
        let token = ApiKey::new("tok-right-0000000000000000001");
        let other = ApiKey::new("tok-wrong-0000000000000000002");
        let challenge = new_challenge().unwrap();
        assert!(is_challenge(challenge.as_bytes()));
        assert_ne!(challenge, new_challenge().unwrap(), "fresh each time");
        let right = prove(&token, &challenge);
        assert!(proves(&right, &token, &challenge));
        assert!(proves(
            &format!("{}, {right}", prove(&other, &challenge)),
            &token,
            &challenge
        ));
        assert!(!proves(&prove(&other, &challenge), &token, &challenge));
        let replayed = new_challenge().unwrap();
        assert!(
            !proves(&right, &token, &replayed),
            "a proof fits one challenge"
        );
        assert!(!proves("", &token, &challenge));
        assert!(!proves("zz, ,", &token, &challenge));
        assert!(!right.contains(token.expose()));
    }

    #[test]
    fn hostile_challenges_are_not_challenges() {
        assert!(!is_challenge(b""));
        assert!(!is_challenge(&[b'a'; 63]));
        assert!(!is_challenge(&[b'g'; 64]));
        assert!(!is_challenge(&[b'a'; 4096]));
    }
}
