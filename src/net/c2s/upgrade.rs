//! XEP-0480 upgrade tasks on a client connection, between a successful
//! SASL2 password exchange and its `<success/>`: for each SCRAM hash the
//! client asked for and the account has no keys for, `<continue/>`, the
//! client's `<next/>`, our salt and iteration count, its SaltedPassword;
//! the keys of every task are stored together at the end, so a failed
//! task leaves nothing behind. The element rules are in
//! `stream::sasl_upgrade`.

use rand::RngCore;

use super::{ClientStream, Connection};
use crate::accounts::mechanism_key;
use crate::net::xmlstream::Flow;
use crate::sasl::{SaslError, ScramCredentials, ScramHash};
use crate::stanza::StreamErrorCondition;
use crate::storage::ScramRecord;
use crate::stream::c2s::Mechanism;
use crate::stream::sasl2::NS_SASL2;
use crate::stream::sasl_upgrade as rules;
use crate::xml::{Element, StreamEvent};

/// Salt bytes handed out for an upgraded key (as for new passwords).
const SALT_BYTES: usize = 16;

impl<S: ClientStream> Connection<S> {
    /// The hashes upgrade tasks are advertised for on this stream: the
    /// SCRAM mechanisms offered, over TLS only — the SaltedPassword a task
    /// carries is as good as the password to whoever reads it.
    pub(super) fn upgrades_offered(&self, mechs: &[Mechanism]) -> Vec<ScramHash> {
        if !self.upgrades_allowed() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for m in mechs {
            if let Mechanism::Scram { hash, .. } = m {
                if !out.contains(hash) {
                    out.push(*hash);
                }
            }
        }
        out
    }

    fn upgrades_allowed(&self) -> bool {
        self.server.config().sasl2.upgrade_tasks && self.stream.is_secure()
    }

    /// Runs the tasks `requested` calls for on `username`'s account.
    /// `additional_data` (the mechanism's final message) goes into the
    /// first `<continue/>` and is taken when a task runs; otherwise it is
    /// left for `<success/>`. Only after a password exchange: a FAST token
    /// must not be turned into a password.
    pub(super) async fn upgrade_tasks(
        &mut self,
        username: &str,
        requested: &[ScramHash],
        additional_data: &mut Option<Vec<u8>>,
    ) -> Flow<Result<(), SaslError>> {
        // Every SCRAM hash is offered wherever SASL2 is; a request where
        // tasks are not advertised is ignored, as unknown ones are.
        if requested.is_empty() || !self.upgrades_allowed() {
            return Ok(Ok(()));
        }
        let store = self.server.store.clone();
        let have = match store.scram_mechanisms(&self.domain, username).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "reading SCRAM keys for upgrade tasks");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        // A key the account has already is not replaced (§"Business
        // Rules": the older data stays): that request is skipped.
        let tasks: Vec<ScramHash> = requested
            .iter()
            .copied()
            .filter(|h| !have.iter().any(|m| m == mechanism_key(*h)))
            .collect();
        let iterations = self.server.config().limits.scram_iterations;
        let mut keys = Vec::with_capacity(tasks.len());
        for hash in tasks {
            self.stream.write(&rules::continue_with(
                hash,
                additional_data.take().as_deref(),
            ));
            self.stream.flush().await?;
            let next = match self.task_element().await? {
                Ok(el) => el,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = rules::check_next(&next, hash) {
                return Ok(Err(e));
            }
            let mut salt = vec![0u8; SALT_BYTES];
            rand::thread_rng().fill_bytes(&mut salt);
            self.stream.write(&rules::salt_data(&salt, iterations));
            self.stream.flush().await?;
            let data = match self.task_element().await? {
                Ok(el) => el,
                Err(e) => return Ok(Err(e)),
            };
            let salted = match rules::salted_password(&data, hash) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let c = ScramCredentials::from_salted_password(hash, &salted, &salt, iterations);
            keys.push(ScramRecord {
                mechanism: mechanism_key(hash).to_string(),
                salt: c.salt,
                iterations: c.iterations,
                stored_key: c.stored_key,
                server_key: c.server_key,
            });
        }
        if keys.is_empty() {
            return Ok(Ok(()));
        }
        match store
            .add_scram_credentials(&self.domain, username, &keys)
            .await
        {
            Ok(true) => {
                tracing::info!(
                    conn = self.id,
                    user = username,
                    added = keys.len(),
                    "SCRAM keys added by upgrade tasks (XEP-0480)"
                );
                Ok(Ok(()))
            }
            // Deleted meanwhile.
            Ok(false) => Ok(Err(SaslError::NotAuthorized)),
            Err(e) => {
                tracing::error!(error = %e, "storing upgraded SCRAM keys");
                Ok(Err(SaslError::TemporaryAuthFailure))
            }
        }
    }

    /// The client's next element of a task: SASL2's namespace only;
    /// `<abort/>` ends the authentication, anything else the stream.
    async fn task_element(&mut self) -> Flow<Result<Element, SaslError>> {
        match self.stream.next_event().await? {
            StreamEvent::Stanza(el) if el.is("abort", NS_SASL2) => Ok(Err(SaslError::Aborted)),
            StreamEvent::Stanza(el) if el.ns() == NS_SASL2 => Ok(Ok(el)),
            StreamEvent::End => Err(self.stream.close_stream().await),
            _ => Err(self
                .stream
                .close_with(StreamErrorCondition::NotAuthorized, None)
                .await),
        }
    }
}
