//! What administrators set (XEP-0133): disabled accounts, whose logins
//! fail with `account-disabled` until enabled again, and each host's
//! message of the day.

use super::{StorageError, Store};

impl Store {
    /// Marks an account disabled; false when it already was.
    pub async fn disable_account(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "INSERT INTO disabled_accounts (domain, username, disabled_at) \
                         VALUES ($1, $2, $3) ON CONFLICT (domain, username) DO NOTHING";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let r = on_pool!(self, pool => sqlx::query(Q)
            .bind(domain)
            .bind(username)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(r > 0)
    }

    /// Lets a disabled account log in again; false when it was not disabled.
    pub async fn enable_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        const Q: &str = "DELETE FROM disabled_accounts WHERE domain = $1 AND username = $2";
        let r = on_pool!(self, pool => sqlx::query(Q)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(r > 0)
    }

    /// Is the account disabled?
    pub async fn account_disabled(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "SELECT 1 FROM disabled_accounts WHERE domain = $1 AND username = $2";
        let row: Option<(i32,)> = on_pool!(self, pool => sqlx::query_as(Q)
            .bind(domain)
            .bind(username)
            .fetch_optional(pool)
            .await?);
        Ok(row.is_some())
    }

    /// The message of the day of `domain`, if one is set.
    pub async fn motd_get(&self, domain: &str) -> Result<Option<String>, StorageError> {
        const Q: &str = "SELECT text FROM motd WHERE domain = $1";
        let row: Option<(String,)> = on_pool!(self, pool => sqlx::query_as(Q)
            .bind(domain)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|r| r.0))
    }

    /// Sets (or replaces) the message of the day of `domain`.
    pub async fn motd_set(&self, domain: &str, text: &str) -> Result<(), StorageError> {
        const Q: &str = "INSERT INTO motd (domain, text) VALUES ($1, $2) \
                         ON CONFLICT (domain) DO UPDATE SET text = excluded.text";
        on_pool!(self, pool => {
            sqlx::query(Q)
                .bind(domain)
                .bind(text)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes the message of the day of `domain`; whether there was one.
    /// Who saw it is forgotten too: a message set afterwards is news, even
    /// with the same text.
    pub async fn motd_delete(&self, domain: &str) -> Result<bool, StorageError> {
        const Q: &str = "DELETE FROM motd WHERE domain = $1";
        const SEEN: &str = "DELETE FROM motd_seen WHERE domain = $1";
        let r = on_pool!(self, pool => {
            let r = sqlx::query(Q).bind(domain).execute(pool).await?.rows_affected();
            sqlx::query(SEEN).bind(domain).execute(pool).await?;
            r
        });
        Ok(r > 0)
    }

    /// Records that an account is being sent the message of the day named
    /// `digest`; false when it was sent that one already. One statement,
    /// so two sessions logging in together send it once.
    pub async fn motd_mark_seen(
        &self,
        domain: &str,
        username: &str,
        digest: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "INSERT INTO motd_seen (domain, username, digest) VALUES ($1, $2, $3) \
                         ON CONFLICT (domain, username) DO UPDATE SET digest = excluded.digest \
                         WHERE motd_seen.digest <> excluded.digest";
        let r = on_pool!(self, pool => sqlx::query(Q)
            .bind(domain)
            .bind(username)
            .bind(digest)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(r > 0)
    }
}
