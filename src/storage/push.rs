//! Push notification registrations (XEP-0357): the app servers an account
//! asked us to publish to, a few per account.

use super::{StorageError, Store};

/// One registration: where to publish, and the publish options to send.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PushRegistration {
    /// The app server's JID.
    pub service: String,
    pub node: String,
    /// The publish-options data form as the client sent it (serialized XML).
    pub options: Option<String>,
}

impl Store {
    /// Adds a registration, or replaces the options of the same (service,
    /// node); a new one only while the account has fewer than `max`.
    /// Returns whether it was stored.
    pub async fn push_enable(
        &self,
        domain: &str,
        username: &str,
        reg: &PushRegistration,
        max: u32,
    ) -> Result<bool, StorageError> {
        // One statement checks and writes, so two enables at once cannot
        // both pass the count on SQLite; on PostgreSQL concurrent enables
        // of one account overshoot by at most those in flight.
        const Q: &str = "INSERT INTO push_registrations (domain, username, service, node, options) \
             SELECT $1, $2, $3, $4, $5 WHERE \
               (SELECT COUNT(*) FROM push_registrations WHERE domain = $1 AND username = $2) < $6 \
               OR EXISTS (SELECT 1 FROM push_registrations \
                          WHERE domain = $1 AND username = $2 AND service = $3 AND node = $4) \
             ON CONFLICT (domain, username, service, node) DO UPDATE SET options = excluded.options";
        let n = on_pool!(self, pool => sqlx::query(Q)
            .bind(domain)
            .bind(username)
            .bind(&reg.service)
            .bind(&reg.node)
            .bind(&reg.options)
            .bind(max as i64)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Removes the registrations with `service`: only the one with `node`
    /// when given, else all of them (XEP-0357 §6). Returns how many.
    pub async fn push_disable(
        &self,
        domain: &str,
        username: &str,
        service: &str,
        node: Option<&str>,
    ) -> Result<u64, StorageError> {
        const ONE: &str = "DELETE FROM push_registrations \
             WHERE domain = $1 AND username = $2 AND service = $3 AND node = $4";
        const ALL: &str =
            "DELETE FROM push_registrations WHERE domain = $1 AND username = $2 AND service = $3";
        let n = match node {
            Some(node) => on_pool!(self, pool => sqlx::query(ONE)
                .bind(domain)
                .bind(username)
                .bind(service)
                .bind(node)
                .execute(pool)
                .await?
                .rows_affected()),
            None => on_pool!(self, pool => sqlx::query(ALL)
                .bind(domain)
                .bind(username)
                .bind(service)
                .execute(pool)
                .await?
                .rows_affected()),
        };
        Ok(n)
    }

    /// An account's registrations, in a stable order.
    pub async fn push_registrations(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<PushRegistration>, StorageError> {
        const Q: &str = "SELECT service, node, options FROM push_registrations \
             WHERE domain = $1 AND username = $2 ORDER BY service, node";
        Ok(on_pool!(self, pool => sqlx::query_as(Q)
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?))
    }
}
