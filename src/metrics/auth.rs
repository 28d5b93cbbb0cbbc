//! Logins that succeeded and failed, by SASL profile and mechanism.
//!
//! The mechanism label comes from a fixed list of the names the server
//! offers: whatever else a client sends counts as "other", so a client
//! cannot create series (label values) at will.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The mechanisms offered anywhere (legacy SASL, SASL2, FAST).
const MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-512-PLUS",
    "HT-SHA-256-NONE",
    "HT-SHA-256-UNIQ",
    "HT-SHA-256-ENDP",
    "HT-SHA-256-EXPR",
];

/// The SASL profile a login used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// RFC 6120's `<auth/>`.
    Sasl,
    /// XEP-0388's `<authenticate/>` (FAST tokens included).
    Sasl2,
}

impl Profile {
    fn label(self) -> &'static str {
        match self {
            Profile::Sasl => "sasl",
            Profile::Sasl2 => "sasl2",
        }
    }
}

type Labels = [(&'static str, &'static str); 3];

/// `waxwing_c2s_auth_total{profile, mechanism, result}`.
pub struct AuthCounters {
    family: Family<Labels, Counter>,
}

/// The label value for a client-supplied mechanism name.
fn mechanism_label(name: &str) -> &'static str {
    MECHANISMS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

impl AuthCounters {
    pub(super) fn register(registry: &mut Registry) -> AuthCounters {
        let family = Family::<Labels, Counter>::default();
        // The usual series exist at 0 from the start, so a first failure
        // shows as a rate rather than as a new series (and the family is
        // in the exposition before any login).
        for mechanism in ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            for result in ["success", "failure"] {
                drop(family.get_or_create(&[
                    ("profile", Profile::Sasl.label()),
                    ("mechanism", mechanism),
                    ("result", result),
                ]));
            }
        }
        registry.register(
            "waxwing_c2s_auth",
            "Client authentication attempts by SASL profile, mechanism and result",
            family.clone(),
        );
        AuthCounters { family }
    }

    /// Counts one finished attempt (once per login, so the label lookup is
    /// no hot-path cost).
    pub fn record(&self, profile: Profile, mechanism: &str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.family
            .get_or_create(&[
                ("profile", profile.label()),
                ("mechanism", mechanism_label(mechanism)),
                ("result", result),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_mechanisms_share_one_label() {
        assert_eq!(mechanism_label("SCRAM-SHA-256"), "SCRAM-SHA-256");
        assert_eq!(mechanism_label("X-MADE-UP-1"), "other");
        assert_eq!(mechanism_label("X-MADE-UP-2"), "other");
        let mut r = Registry::default();
        let a = AuthCounters::register(&mut r);
        a.record(Profile::Sasl, "X-1", false);
        a.record(Profile::Sasl, "X-2", false);
        let other = [
            ("profile", "sasl"),
            ("mechanism", "other"),
            ("result", "failure"),
        ];
        assert_eq!(a.family.get(&other).map(|c| c.get()), Some(2));
    }
}
