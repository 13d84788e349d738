//! The clock: the one place that reads the wall time, as unix seconds and as the RFC 3339
//! text every stored timestamp uses. A leaf module (it depends on nothing in the crate), so
//! the agent, the server and the wire types can all use it without importing one another.

/// Seconds since the unix epoch, UTC.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
