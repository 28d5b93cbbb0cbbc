//! Entity Time (XEP-0202): the server's clock, in UTC.

use super::{IqOutcome, IqRequest, Module};
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:time";

pub const MODULE: Module = Module {
    xep: 202,
    namespaces: &[NS],
    features: &[NS],
    handle: |req| super::ready(answer(req)),
};

fn answer(req: &IqRequest<'_>) -> IqOutcome {
    req.require_server_get()?;
    Ok(Some(
        Element::new("time", NS)
            .with_child(Element::new("tzo", NS).with_text("+00:00"))
            .with_child(Element::new("utc", NS).with_text(utc_now())),
    ))
}

/// Now in whole seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now as an XEP-0082 DateTime in UTC, e.g. 2026-11-21T23:04:30.123Z.
pub fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

/// A unix time as an XEP-0082 DateTime in UTC, e.g. 2026-11-21T23:04:30Z.
pub fn xep0082(unix_secs: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_secs).ok()?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).ok()
}
