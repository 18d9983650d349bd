//! Webhook signatures: HMAC-SHA256 over `"{timestamp}.{raw body}"`, sent as `v1=<hex>`.
//!
//! The timestamp is signed with the body so that a captured delivery cannot be replayed later
//! with a fresh timestamp; the receiver refuses timestamps outside a window around its own
//! clock. The receiver's clock is a parameter (`now_unix`) so that tests can move it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The scheme prefix of a signature header value. A new scheme would get a new prefix, so that
/// senders and receivers can run both during a migration.
pub const SCHEME_PREFIX: &str = "v1=";
/// The length of an HMAC-SHA256 tag in hex digits.
const TAG_HEX_LEN: usize = 64;

/// Why a webhook signature was refused. A receiver answers every variant with 4xx: none of them
/// gets better by retrying the same delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the webhook has no {0} header")]
    Missing(&'static str),
    #[error("the webhook's {header} header is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error(
        "the webhook's timestamp {timestamp} is more than {window_seconds} s away from now ({now_unix})"
    )]
    Expired {
        timestamp: i64,
        now_unix: i64,
        window_seconds: i64,
    },
    #[error("the webhook's signature does not match its body and timestamp")]
    Mismatch,
}

/// The signature header value (`v1=<hex>`) for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("{SCHEME_PREFIX}{}", hex::encode(tag))
}

/// Checks a delivery's timestamp and signature headers against its raw body.
///
/// The timestamp must be within `window_seconds` of `now_unix` either way (a sender's clock may
/// run ahead of the receiver's). The tag is compared in constant time.
pub fn verify(
    secret: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    window_seconds: i64,
) -> Result<(), SignatureError> {
    let timestamp_text = timestamp_header.trim();
    let signature_text = signature_header.trim();
    if timestamp_text.is_empty() {
        return Err(SignatureError::Missing(
            crate::carrier_webhook::TIMESTAMP_HEADER,
        ));
    }
    if signature_text.is_empty() {
        return Err(SignatureError::Missing(
            crate::carrier_webhook::SIGNATURE_HEADER,
        ));
    }
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::Malformed {
            header: crate::carrier_webhook::TIMESTAMP_HEADER,
            reason: "it is not a whole number of Unix seconds",
        })?;
    let tag = parse_signature(signature_text)?;
    // A difference that overflows is certainly outside any window.
    let within = now_unix
        .checked_sub(timestamp)
        .is_some_and(|age| age.checked_abs().is_some_and(|age| age <= window_seconds));
    if !within {
        return Err(SignatureError::Expired {
            timestamp,
            now_unix,
            window_seconds,
        });
    }
    mac(secret, timestamp, body)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)
}

fn parse_signature(text: &str) -> Result<Vec<u8>, SignatureError> {
    let malformed = |reason| SignatureError::Malformed {
        header: crate::carrier_webhook::SIGNATURE_HEADER,
        reason,
    };
    let hex_tag = text
        .strip_prefix(SCHEME_PREFIX)
        .ok_or(malformed("it does not start with `v1=`"))?;
    if hex_tag.len() != TAG_HEX_LEN {
        return Err(malformed("the tag is not 64 hex digits"));
    }
    hex::decode(hex_tag).map_err(|_| malformed("the tag is not 64 hex digits"))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC pads or hashes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";
    const NOW: i64 = 1_700_000_000;

    /// A signature made by `sign` is accepted by `verify` at the same instant.
    #[test]
    fn round_trip() {
        let signature = sign(SECRET, NOW, b"{}");
        assert!(signature.starts_with(SCHEME_PREFIX));
        assert_eq!(
            verify(SECRET, &NOW.to_string(), &signature, b"{}", NOW, 300),
            Ok(())
        );
    }

    /// Each way a delivery can be wrong is refused with its own error.
    #[test]
    fn refusals() {
        let signature = sign(SECRET, NOW, b"{}");
        let stamp = NOW.to_string();
        assert_eq!(
            verify(SECRET, "", &signature, b"{}", NOW, 300),
            Err(SignatureError::Missing(
                crate::carrier_webhook::TIMESTAMP_HEADER
            ))
        );
        assert!(matches!(
            verify(SECRET, "soon", &signature, b"{}", NOW, 300),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(matches!(
            verify(SECRET, &stamp, "v0=abc", b"{}", NOW, 300),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(matches!(
            verify(SECRET, &stamp, &signature, b"{}", NOW + 301, 300),
            Err(SignatureError::Expired { .. })
        ));
        assert_eq!(
            verify(SECRET, &stamp, &signature, b"{ }", NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("other", &stamp, &signature, b"{}", NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(SECRET, &i64::MIN.to_string(), &signature, b"{}", NOW, 300),
            Err(SignatureError::Expired { .. })
        ));
    }
}
