//! WHIP-shaped signaling (RFC 9725): `POST /v1/whip` with an SDP offer creates a
//! session (`201`, the answer, `Location: /v1/whip/{resource}`); `DELETE` on the
//! Location ends it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use turngate_core::ErrorCode;
use turngate_media::peer;
use turngate_media::session::SessionEnd;

use crate::app::App;
use crate::auth::Action;
use crate::problem::Problem;

/// `POST /v1/whip`: an SDP offer in, `201 Created` with the answer and `Location` out.
/// Every refusal is counted by its code (`turngate_sessions_refused_total`).
pub(super) async fn create_session(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let result = offer(Arc::clone(&app), peer, headers, body).await;
    if let Err(problem) = &result {
        app.turns
            .metrics
            .sessions_refused
            .inc([problem.code.as_str()]);
    }
    result
}

async fn offer(
    app: Arc<App>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if app.shutting_down() {
        return Err(Problem::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down",
        ));
    }
    let claims = app.client(&headers, Action::Whip)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            format!("the offer must be sent as application/sdp, not {content_type:?}"),
        ));
    }
    let too_large = || {
        Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("the offer exceeds {} bytes", app.max_offer_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.max_offer_bytes) {
        return Err(too_large());
    }
    // The whole offer must arrive within the body read timeout: that bounds a client
    // trickling it byte by byte, which the pause limit alone does not.
    let body = tokio::time::timeout(app.body_read_timeout, to_bytes(body, app.max_offer_bytes))
        .await
        .map_err(|_| {
            Problem::new(
                ErrorCode::RequestTimeout,
                "the offer did not arrive within the body read timeout",
            )
        })?
        .map_err(|e| super::server::body_failed(&e, too_large()))?;
    let offer = String::from_utf8(body.to_vec())
        .map_err(|_| Problem::new(ErrorCode::InvalidSdp, "the offer is not UTF-8 text"))?;
    peer::check_offer(&offer).map_err(|e| Problem::new(e.code(), e.to_string()))?;

    // Set up in a task of its own: a client that hangs up mid-way must not leave a
    // half-built peer connection (and its socket) behind.
    let client = client_ip(peer.ip(), &headers, &app.trusted_proxies);
    let setup = tokio::spawn(Arc::clone(&app).open_session(offer, client, claims));
    let (answer, resource) = setup
        .await
        .map_err(|_| Problem::new(ErrorCode::Internal, "session setup failed"))??;
    let location = format!("/v1/whip/{resource}");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response())
}

/// `DELETE /v1/whip/{resource}`: ends the session and frees what it held.
///
/// Needs a token of the session's creator (scope `whip`); another subject's gets 404, as
/// if the resource did not exist.
pub(super) async fn delete_session(
    State(app): State<Arc<App>>,
    Path(resource): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let entry = app.client_session(&headers, &resource, Action::Whip)?;
    entry.shared.close(SessionEnd::Deleted);
    entry.shared.wait_ended().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last
/// address in `X-Forwarded-For` that is not one of the trusted proxies (each proxy
/// appends the address it received from; only the entries trusted proxies added can be
/// believed).
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    // An IPv4 peer of a socket listening on `[::]` shows as `::ffff:a.b.c.d`.
    let peer = peer.to_canonical();
    let trusted: Vec<IpAddr> = trusted.iter().map(IpAddr::to_canonical).collect();
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in forwarded.iter().rev() {
        // Some proxies write `address:port` (`[v6]:port`).
        let entry = entry.trim();
        let parsed = entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
            .map(|ip| ip.to_canonical());
        match parsed {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Not an address: nothing further left can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // From a trusted proxy: the last entry no trusted proxy wrote.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        // IPv4-mapped addresses and ports are the plain address.
        headers.insert("x-forwarded-for", "203.0.113.7:4711".parse().unwrap());
        let mapped = ip("::ffff:10.0.0.1");
        assert_eq!(client_ip(mapped, &headers, &trusted), ip("203.0.113.7"));
        headers.insert("x-forwarded-for", "::ffff:203.0.113.7".parse().unwrap());
        assert_eq!(client_ip(mapped, &headers, &trusted), ip("203.0.113.7"));
        // Garbage stops the walk at the proxy.
        headers.insert("x-forwarded-for", "203.0.113.7, junk".parse().unwrap());
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.1")
        );
    }
}
