//! Stream negotiation rules, one module per stream role (c2s, external
//! components, server-to-server), and the rules they share.

pub mod c2s;
pub mod component;
pub mod s2s;
pub mod sasl2;
pub mod sasl_upgrade;
pub mod sm;

use crate::stanza::StreamErrorCondition;

/// A restarted stream (after STARTTLS or SASL) must address the domain the
/// first header of the connection named. Letting a later header switch
/// domains would let an account authenticated on one virtual host bind on
/// another (alice@a.test becoming alice@b.test), and would present the
/// certificate of one host while speaking for another. Prosody answers the
/// same way: `not-authorized`, the stream was not authorized for that host.
pub fn check_restart_domain(pinned: &str, addressed: &str) -> Result<(), StreamErrorCondition> {
    if pinned == addressed {
        Ok(())
    } else {
        Err(StreamErrorCondition::NotAuthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_stream_keeps_its_domain() {
        assert_eq!(check_restart_domain("a.test", "a.test"), Ok(()));
        assert_eq!(
            check_restart_domain("a.test", "b.test"),
            Err(StreamErrorCondition::NotAuthorized)
        );
    }
}
