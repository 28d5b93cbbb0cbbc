//! Publish-subscribe (XEP-0060) nodes, items, subscriptions and
//! affiliations of one service, named by its owner (domain, username).
//! The engine (`crate::pubsub`) decides; this only reads and writes.

use super::{StorageError, Store};

/// One stored item: its id, who published it, its payload XML.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredItem {
    pub item_id: String,
    pub publisher: String,
    pub payload: String,
}

impl Store {
    /// The configuration text of a node, if it exists.
    pub async fn pubsub_node(
        &self,
        domain: &str,
        username: &str,
        node: &str,
    ) -> Result<Option<String>, StorageError> {
        const Q: &str =
            "SELECT config FROM pubsub_nodes WHERE domain = $1 AND username = $2 AND node = $3";
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(Q).bind(domain).bind(username).bind(node).fetch_optional(pool).await?
        }))
    }

    /// Every node of a service with its configuration text, by name.
    pub async fn pubsub_nodes(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        const Q: &str = "SELECT node, config FROM pubsub_nodes WHERE domain = $1 AND username = $2 ORDER BY node";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).fetch_all(pool).await?
        }))
    }

    /// Creates a node unless the service already has it or holds
    /// `max_nodes`; returns whether it was created.
    pub async fn pubsub_node_create(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        config: &str,
        max_nodes: u32,
    ) -> Result<bool, StorageError> {
        // One statement checks the quota and inserts.
        const Q: &str = "INSERT INTO pubsub_nodes (domain, username, node, config) \
             SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM pubsub_nodes WHERE domain = $1 AND username = $2) < $5 \
             ON CONFLICT DO NOTHING";
        let n = on_pool!(self, pool => {
            sqlx::query(Q)
                .bind(domain)
                .bind(username)
                .bind(node)
                .bind(config)
                .bind(i64::from(max_nodes))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Replaces a node's configuration and trims its items to `max_items`.
    pub async fn pubsub_node_configure(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        config: &str,
        max_items: u32,
    ) -> Result<(), StorageError> {
        const Q: &str =
            "UPDATE pubsub_nodes SET config = $4 WHERE domain = $1 AND username = $2 AND node = $3";
        on_pool!(self, pool => {
            sqlx::query(Q).bind(domain).bind(username).bind(node).bind(config).execute(pool).await?;
        });
        self.pubsub_trim(domain, username, node, max_items).await
    }

    /// Deletes a node with its items, subscriptions and affiliations;
    /// returns whether it existed.
    pub async fn pubsub_node_delete(
        &self,
        domain: &str,
        username: &str,
        node: &str,
    ) -> Result<bool, StorageError> {
        let mut n = 0;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for table in ["pubsub_items", "pubsub_subscriptions", "pubsub_affiliations", "pubsub_nodes"] {
                let q = format!("DELETE FROM {table} WHERE domain = $1 AND username = $2 AND node = $3");
                n = sqlx::query(&q).bind(domain).bind(username).bind(node).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
        });
        Ok(n > 0)
    }

    /// Stores an item (replacing one with the same id, which becomes the
    /// newest), then keeps only the node's newest `max_items`.
    #[allow(clippy::too_many_arguments)]
    pub async fn pubsub_item_put(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        item_id: &str,
        publisher: &str,
        payload: &str,
        max_items: u32,
    ) -> Result<(), StorageError> {
        const DEL: &str = "DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 AND item_id = $4";
        const INS: &str =
            "INSERT INTO pubsub_items (domain, username, node, item_id, publisher, payload) \
             VALUES ($1, $2, $3, $4, $5, $6)";
        const TRIM: &str = "DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 \
             AND id NOT IN (SELECT id FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 \
             ORDER BY id DESC LIMIT $4)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(DEL).bind(domain).bind(username).bind(node).bind(item_id).execute(&mut *tx).await?;
            sqlx::query(INS)
                .bind(domain)
                .bind(username)
                .bind(node)
                .bind(item_id)
                .bind(publisher)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            sqlx::query(TRIM).bind(domain).bind(username).bind(node).bind(i64::from(max_items)).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Keeps only a node's newest `max_items` items.
    pub async fn pubsub_trim(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        max_items: u32,
    ) -> Result<(), StorageError> {
        const TRIM: &str = "DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 \
             AND id NOT IN (SELECT id FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 \
             ORDER BY id DESC LIMIT $4)";
        on_pool!(self, pool => {
            sqlx::query(TRIM).bind(domain).bind(username).bind(node).bind(i64::from(max_items)).execute(pool).await?;
        });
        Ok(())
    }

    /// The newest `limit` items of a node, oldest of them first.
    pub async fn pubsub_items(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        limit: u32,
    ) -> Result<Vec<StoredItem>, StorageError> {
        const Q: &str = "SELECT item_id, publisher, payload FROM pubsub_items \
             WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY id DESC LIMIT $4";
        let mut items: Vec<StoredItem> = on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).bind(node).bind(i64::from(limit)).fetch_all(pool).await?
        });
        items.reverse();
        Ok(items)
    }

    /// One item by id.
    pub async fn pubsub_item(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        item_id: &str,
    ) -> Result<Option<StoredItem>, StorageError> {
        const Q: &str = "SELECT item_id, publisher, payload FROM pubsub_items \
             WHERE domain = $1 AND username = $2 AND node = $3 AND item_id = $4";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).bind(node).bind(item_id).fetch_optional(pool).await?
        }))
    }

    /// Deletes one item; returns whether it existed.
    pub async fn pubsub_item_delete(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        item_id: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 AND item_id = $4";
        let n = on_pool!(self, pool => {
            sqlx::query(Q).bind(domain).bind(username).bind(node).bind(item_id).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Deletes every item of a node.
    pub async fn pubsub_purge(
        &self,
        domain: &str,
        username: &str,
        node: &str,
    ) -> Result<(), StorageError> {
        const Q: &str =
            "DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3";
        on_pool!(self, pool => {
            sqlx::query(Q).bind(domain).bind(username).bind(node).execute(pool).await?;
        });
        Ok(())
    }

    /// The explicit subscribers of a node.
    pub async fn pubsub_subscribers(
        &self,
        domain: &str,
        username: &str,
        node: &str,
    ) -> Result<Vec<String>, StorageError> {
        const Q: &str = "SELECT jid FROM pubsub_subscriptions WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY jid";
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(Q).bind(domain).bind(username).bind(node).fetch_all(pool).await?
        }))
    }

    /// Subscribes `jid` unless the node has `max` subscribers; returns
    /// whether it is subscribed now.
    pub async fn pubsub_subscribe(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        jid: &str,
        max: u32,
    ) -> Result<bool, StorageError> {
        const Q: &str = "INSERT INTO pubsub_subscriptions (domain, username, node, jid) \
             SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM pubsub_subscriptions \
             WHERE domain = $1 AND username = $2 AND node = $3) < $5 ON CONFLICT DO NOTHING";
        on_pool!(self, pool => {
            sqlx::query(Q).bind(domain).bind(username).bind(node).bind(jid).bind(i64::from(max)).execute(pool).await?;
        });
        Ok(self
            .pubsub_subscribers(domain, username, node)
            .await?
            .iter()
            .any(|j| j == jid))
    }

    /// Removes a subscription; returns whether there was one.
    pub async fn pubsub_unsubscribe(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        jid: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "DELETE FROM pubsub_subscriptions WHERE domain = $1 AND username = $2 AND node = $3 AND jid = $4";
        let n = on_pool!(self, pool => {
            sqlx::query(Q).bind(domain).bind(username).bind(node).bind(jid).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// The nodes of a service `jid` (or its bare JID `bare`) is subscribed
    /// to, with the JID subscribed: one query whatever the node count.
    pub async fn pubsub_subscriptions_of(
        &self,
        domain: &str,
        username: &str,
        jid: &str,
        bare: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        const Q: &str =
            "SELECT node, jid FROM pubsub_subscriptions WHERE domain = $1 AND username = $2 \
             AND (jid = $3 OR jid = $4) ORDER BY node";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).bind(jid).bind(bare).fetch_all(pool).await?
        }))
    }

    /// The affiliations `bare` has on the nodes of a service (node, affiliation).
    pub async fn pubsub_affiliations_of(
        &self,
        domain: &str,
        username: &str,
        bare: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        const Q: &str = "SELECT node, affiliation FROM pubsub_affiliations WHERE domain = $1 AND username = $2 \
             AND jid = $3 ORDER BY node";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).bind(bare).fetch_all(pool).await?
        }))
    }

    /// The affiliations the owner set on a node (jid, affiliation).
    pub async fn pubsub_affiliations(
        &self,
        domain: &str,
        username: &str,
        node: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        const Q: &str = "SELECT jid, affiliation FROM pubsub_affiliations WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY jid";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).bind(node).fetch_all(pool).await?
        }))
    }

    /// Sets (or with `none`, removes) an affiliation.
    pub async fn pubsub_affiliate(
        &self,
        domain: &str,
        username: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<(), StorageError> {
        const DEL: &str = "DELETE FROM pubsub_affiliations WHERE domain = $1 AND username = $2 AND node = $3 AND jid = $4";
        const INS: &str = "INSERT INTO pubsub_affiliations (domain, username, node, jid, affiliation) VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(DEL).bind(domain).bind(username).bind(node).bind(jid).execute(&mut *tx).await?;
            if affiliation != "none" {
                sqlx::query(INS).bind(domain).bind(username).bind(node).bind(jid).bind(affiliation).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
