//! Security headers on every HTTP response.
//!
//! - `Content-Security-Policy`: scripts only from this origin (the demo page's script is the
//!   served `/demo.js`, never inline), connections (`fetch`, WebSocket) only to this origin,
//!   images from anywhere over http(s) (thumbnails live on other hosts), no plugins, no
//!   `<base>`, and `frame-ancestors` from `--frame-ancestors` (default `'none'`: no site may
//!   frame the page, so it cannot be clickjacked). Styles allow `'unsafe-inline'` because the
//!   browser client injects its toast stylesheet; every server string is rendered as text, so
//!   there is no markup to inject styles through.
//! - `X-Content-Type-Options: nosniff`: a response is only ever what its `Content-Type` says.
//! - `Referrer-Policy: no-referrer`: page URLs (with their `?region=`) stay private.

use axum::http::header::InvalidHeaderValue;
use axum::http::{header, HeaderValue};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

/// A `--frame-ancestors` value that cannot be put in a header or would break the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a frame-ancestors source list (e.g. 'none', 'self' or https://portal.example.com)")]
pub struct BadFrameAncestors(pub String);

/// Validates a `--frame-ancestors` source list: visible ASCII, no `;` or `,` (which would end
/// the directive or the policy), not empty.
pub fn parse_frame_ancestors(text: &str) -> Result<String, BadFrameAncestors> {
    let text = text.trim();
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|byte| (byte == b' ' || byte.is_ascii_graphic()) && byte != b';' && byte != b',');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(BadFrameAncestors(text.to_owned()))
    }
}

/// The `Content-Security-Policy` value for `frame_ancestors`.
pub fn content_security_policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' https: http: data:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
    )
}

/// Adds the security headers to every response of `router` (a handler's own value wins).
/// Fails only for a `frame_ancestors` that [`parse_frame_ancestors`] would refuse.
pub fn secure<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    frame_ancestors: &str,
) -> Result<Router<S>, InvalidHeaderValue> {
    let policy = HeaderValue::from_str(&content_security_policy(frame_ancestors))?;
    Ok(router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            policy,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_cannot_break_out_of_the_directive() {
        assert_eq!(
            parse_frame_ancestors(" 'self' https://a.example ").unwrap(),
            "'self' https://a.example"
        );
        for bad in ["", "'none'; script-src *", "a, b", "x\ny", "é"] {
            assert!(parse_frame_ancestors(bad).is_err(), "{bad:?}");
        }
        assert!(content_security_policy("'none'").ends_with("frame-ancestors 'none'"));
    }
}
