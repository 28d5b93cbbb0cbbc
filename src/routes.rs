//! The route table: what serves each domain. Every "where does this
//! address live" question in the server is answered here, once.
//!
//! A domain is one of our hosts (accounts and sessions), an in-process
//! service run by a feature (`conference.<host>`, `upload.<host>`…), an
//! external component (XEP-0114), or another server reached over s2s —
//! and, in a later cluster mode, another node.

use std::collections::HashMap;

/// What serves a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One of our hosts: its accounts' sessions are in the registry.
    Host,
    /// An in-process service, run by the feature at this index of the
    /// registry (`Feature::deliver_to_service`).
    Service(usize),
    /// An external component's domain (connected or not).
    Component,
    /// Another server's domain, reachable over s2s.
    Remote,
    /// Not ours, and federation is off.
    Unreachable,
}

impl Route {
    /// Is the domain one this server speaks for to other servers (it
    /// accepts s2s streams addressed to it and signs dialback for it)?
    pub fn served_here(self) -> bool {
        matches!(self, Route::Host | Route::Service(_) | Route::Component)
    }
}

/// Domain → route, built once at start from the configuration and the
/// features' services.
#[derive(Debug, Default)]
pub struct RouteTable {
    local: HashMap<String, Route>,
    federation: bool,
}

impl RouteTable {
    /// `hosts`, `services` (domain, feature index) and `components` are
    /// normalised domains; a domain named twice is a configuration error.
    pub fn new(
        hosts: impl IntoIterator<Item = String>,
        services: impl IntoIterator<Item = (String, usize)>,
        components: impl IntoIterator<Item = String>,
        federation: bool,
    ) -> Result<RouteTable, String> {
        let mut local = HashMap::new();
        let entries = hosts
            .into_iter()
            .map(|d| (d, Route::Host))
            .chain(services.into_iter().map(|(d, i)| (d, Route::Service(i))))
            .chain(components.into_iter().map(|d| (d, Route::Component)));
        for (domain, route) in entries {
            if let Some(old) = local.insert(domain.clone(), route) {
                if old != route {
                    return Err(format!(
                        "domain {domain} is served twice ({old:?} and {route:?})"
                    ));
                }
            }
        }
        Ok(RouteTable { local, federation })
    }

    /// The route of a normalised domain.
    pub fn route(&self, domain: &str) -> Route {
        match self.local.get(domain) {
            Some(r) => *r,
            None if self.federation => Route::Remote,
            None => Route::Unreachable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_domain() {
        let t = RouteTable::new(
            ["a.test".to_string()],
            [("muc.a.test".to_string(), 3)],
            ["bot.a.test".to_string()],
            true,
        )
        .unwrap();
        assert_eq!(t.route("a.test"), Route::Host);
        assert_eq!(t.route("muc.a.test"), Route::Service(3));
        assert_eq!(t.route("bot.a.test"), Route::Component);
        assert_eq!(t.route("elsewhere.test"), Route::Remote);
        assert!(t.route("bot.a.test").served_here());
        assert!(!t.route("elsewhere.test").served_here());
        let off = RouteTable::new(["a.test".to_string()], [], [], false).unwrap();
        assert_eq!(off.route("elsewhere.test"), Route::Unreachable);
    }

    #[test]
    fn a_domain_served_twice_is_refused() {
        let e = RouteTable::new(["a.test".to_string()], [], ["a.test".to_string()], false);
        assert!(e.is_err());
    }
}
