//! Invitation tokens (XEP-0401, XEP-0379): stored by the SHA-256 of the
//! token, redeemed with one conditional update so that a token with one
//! use left cannot be redeemed twice by racing requests.

use super::{StorageError, Store};

/// One invitation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InviteRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The host the invitation is for.
    pub domain: String,
    /// Bare JID of the inviting user; None for an admin's account invite.
    pub inviter: Option<String>,
    pub may_create_account: bool,
    pub admin: bool,
    /// Unix seconds; None: never expires.
    pub expires: Option<i64>,
    pub uses: i64,
    pub max_uses: i64,
    pub created: i64,
    /// The account name an account invitation reserves (normalised
    /// localpart); None: the invitee chooses.
    pub username: Option<String>,
}

impl InviteRecord {
    /// Can it still be redeemed at `now` (unix seconds)?
    pub fn is_usable(&self, now: i64) -> bool {
        self.uses < self.max_uses && self.expires.is_none_or(|e| e > now)
    }
}

const COLUMNS: &str = "token_hash, domain, inviter, may_create_account, admin, expires, uses, \
     max_uses, created, username";

impl Store {
    pub async fn invite_add(&self, invite: &InviteRecord) -> Result<(), StorageError> {
        let q = format!(
            "INSERT INTO invites ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        on_pool!(self, pool => sqlx::query(&q)
            .bind(&invite.token_hash)
            .bind(&invite.domain)
            .bind(&invite.inviter)
            .bind(invite.may_create_account)
            .bind(invite.admin)
            .bind(invite.expires)
            .bind(invite.uses)
            .bind(invite.max_uses)
            .bind(invite.created)
            .bind(&invite.username)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    pub async fn invite(&self, token_hash: &str) -> Result<Option<InviteRecord>, StorageError> {
        let q = format!("SELECT {COLUMNS} FROM invites WHERE token_hash = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&q).bind(token_hash).fetch_optional(pool).await?))
    }

    /// Every invitation, of one host or of all, newest first.
    pub async fn invites(&self, domain: Option<&str>) -> Result<Vec<InviteRecord>, StorageError> {
        let q = format!(
            "SELECT {COLUMNS} FROM invites WHERE $1 IS NULL OR domain = $1 ORDER BY created DESC, token_hash"
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&q).bind(domain).fetch_all(pool).await?))
    }

    /// Takes one use of the invitation if it is still usable at `now`.
    /// Whether it was taken.
    pub async fn invite_redeem(&self, token_hash: &str, now: i64) -> Result<bool, StorageError> {
        const Q: &str = "UPDATE invites SET uses = uses + 1 WHERE token_hash = $1 \
             AND uses < max_uses AND (expires IS NULL OR expires > $2)";
        let n = on_pool!(self, pool => sqlx::query(Q)
            .bind(token_hash)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    /// Gives back a use taken by `invite_redeem` when what it was for
    /// failed (the account name was taken).
    pub async fn invite_unredeem(&self, token_hash: &str) -> Result<(), StorageError> {
        const Q: &str = "UPDATE invites SET uses = uses - 1 WHERE token_hash = $1 AND uses > 0";
        on_pool!(self, pool => sqlx::query(Q).bind(token_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Removes invitations whose hash starts with `prefix` (the full hash,
    /// or the short id `ctl invite list` shows). How many went.
    pub async fn invite_revoke(&self, prefix: &str) -> Result<u64, StorageError> {
        const Q: &str = "DELETE FROM invites WHERE substr(token_hash, 1, length($1)) = $1";
        Ok(on_pool!(self, pool => sqlx::query(Q)
            .bind(prefix)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Is `username` on `domain` reserved at `now` by an invitation that
    /// can still be used (XEP-0401: until it is used or expires)?
    pub async fn invite_reserves(
        &self,
        domain: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        const Q: &str = "SELECT COUNT(*) FROM invites WHERE domain = $1 AND username = $2 \
             AND uses < max_uses AND (expires IS NULL OR expires > $3)";
        let row: (i64,) = on_pool!(self, pool => sqlx::query_as(Q)
            .bind(domain)
            .bind(username)
            .bind(now)
            .fetch_one(pool)
            .await?);
        Ok(row.0 > 0)
    }

    /// How many invitations `inviter` (a bare JID) has that can still be
    /// used at `now`: what `[invite] max_live_per_user` counts.
    pub async fn invites_live_by(&self, inviter: &str, now: i64) -> Result<i64, StorageError> {
        const Q: &str = "SELECT COUNT(*) FROM invites WHERE inviter = $1 \
             AND uses < max_uses AND (expires IS NULL OR expires > $2)";
        let row: (i64,) = on_pool!(self, pool => sqlx::query_as(Q)
            .bind(inviter)
            .bind(now)
            .fetch_one(pool)
            .await?);
        Ok(row.0)
    }

    /// Deletes at most `limit` invitations that can no longer be used at
    /// `now` (spent or expired); how many went. Bounded so that one call
    /// never holds the table long: callers call again later.
    pub async fn invite_purge(&self, now: i64, limit: i64) -> Result<u64, StorageError> {
        const Q: &str = "DELETE FROM invites WHERE token_hash IN \
             (SELECT token_hash FROM invites WHERE uses >= max_uses \
              OR (expires IS NOT NULL AND expires <= $1) LIMIT $2)";
        Ok(on_pool!(self, pool => sqlx::query(Q)
            .bind(now)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()))
    }
}
