//! Device authentication of API requests, in two halves: the signed headers and the device
//! (known, enrolled, not revoked) before any body byte is read, then the body, read under a
//! size limit and the body timeout, and the signature over its hash.

use super::*;

/// The signed headers of a request, checked before its body is read.
pub(super) struct SignedHeaders {
    pub(super) device_id: String,
    pub(super) public_key: Vec<u8>,
    pub(super) timestamp: i64,
    pub(super) nonce: String,
    pub(super) signature: String,
}

/// The first half of authentication, before any body byte is read: the signed headers are
/// present and well formed, the timestamp is within the window, and the device is known,
/// enrolled and not revoked. So nobody who is not an enrolled device gets the server to
/// read (and hold) a body.
pub(super) async fn authenticate_headers(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<SignedHeaders, ApiError> {
    check_protocol(headers)?;
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let unauth = |m: &str| ApiError::Unauthorized(m.to_string());
    let (Some(device_id), Some(ts), Some(nonce), Some(signature)) = (
        h(protocol::HEADER_DEVICE),
        h(protocol::HEADER_TIMESTAMP),
        h(protocol::HEADER_NONCE),
        h(protocol::HEADER_SIGNATURE),
    ) else {
        return Err(unauth(
            "this endpoint needs a signed request from an enrolled device (run `outpost enroll`)",
        ));
    };
    let timestamp: i64 = ts.parse().map_err(|_| unauth("bad timestamp"))?;
    let now = unix_now();
    if (timestamp - now).abs() > protocol::REPLAY_WINDOW_SECS {
        return Err(unauth(&format!(
            "request time {timestamp} is more than {} s from the server's clock {now}; the agent corrects for this and retries",
            protocol::REPLAY_WINDOW_SECS
        )));
    }
    if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unauth("bad nonce: 16 to 64 hex digits"));
    }
    if device_id.len() > 64 {
        return Err(unauth("unknown device; enroll it again"));
    }
    let store = st.store.clone();
    let id = device_id.clone();
    let device = blocking(move || store.device(&id))
        .await?
        .map_err(internal)?;
    let Some(device) = device else {
        return Err(unauth("unknown device; enroll it again"));
    };
    if device.revoked_at.is_some() {
        return Err(ApiError::Revoked);
    }
    let Some(public_key) = device.public_key.clone() else {
        return Err(unauth("this device has not enrolled yet"));
    };
    Ok(SignedHeaders {
        device_id,
        public_key,
        timestamp,
        nonce,
        signature,
    })
}

/// Reads a request body of at most `limit` bytes within the body-read timeout. A declared
/// length over the limit is refused before anything is read.
pub(super) async fn read_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "the body is larger than this endpoint's {limit} bytes"
        ))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = st.http.body_read_timeout();
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    let timed_out = || {
        ApiError::Timeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs()
        ))
    };
    match read {
        Err(_) => Err(timed_out()),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(x) = src {
                if x.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                if x.is::<http::BodyTimeout>() {
                    return Err(timed_out());
                }
                src = x.source();
            }
            Err(bad(format!("could not read the request body: {e}")))
        }
    }
}

/// The second half: the signature over method, path and the body's hash, then the nonce
/// is spent. Returns the device id.
pub(super) async fn verify_signed(
    st: &AppState,
    signed: SignedHeaders,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<String, ApiError> {
    let payload = protocol::signing_payload(
        method.as_str(),
        uri.path(),
        body,
        signed.timestamp,
        &signed.nonce,
    );
    if !crate::identity::verify(&signed.public_key, &payload, &signed.signature) {
        return Err(ApiError::Unauthorized("bad signature".into()));
    }
    let now = unix_now();
    let store = st.store.clone();
    let (id, n) = (signed.device_id.clone(), signed.nonce);
    let fresh =
        blocking(move || store.use_nonce(&id, &n, now + 2 * protocol::REPLAY_WINDOW_SECS, now))
            .await?
            .map_err(internal)?;
    if !fresh {
        // 409, not 401: the signature was good, the request was simply seen before (a
        // repeating proxy, or an attacker). The agent retries with a fresh nonce.
        return Err(ApiError::Replayed);
    }
    let store = st.store.clone();
    let id = signed.device_id.clone();
    let _ = blocking(move || store.touch(&id)).await;
    Ok(signed.device_id)
}

/// A signed request's device id and body (at most `limit` bytes): headers and device first,
/// then the body, then the signature over it.
pub(super) async fn authenticated_body(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(String, Bytes), ApiError> {
    let signed = authenticate_headers(st, headers).await?;
    let body = read_body(st, headers, body, limit).await?;
    let device_id = verify_signed(st, signed, method, uri, &body).await?;
    Ok((device_id, body))
}
