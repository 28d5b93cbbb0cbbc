//! Database helpers for tests that reach under the server: a PostgreSQL
//! database of a test's own, and SQLite's write lock held from outside.

use rand::Rng;

use super::TestServer;

/// A fresh PostgreSQL database, made beside `WAXWING_TEST_POSTGRES` (for
/// tests that need a schema or data no other test shares) and dropped by
/// [`OwnPostgres::drop_database`].
pub struct OwnPostgres {
    admin: sqlx::PgPool,
    name: String,
    pub url: String,
}

impl OwnPostgres {
    pub async fn create(prefix: &str) -> OwnPostgres {
        let base = std::env::var("WAXWING_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("{prefix}_{}", rand::thread_rng().gen::<u32>());
        let admin = sqlx::PgPool::connect(&base)
            .await
            .expect("PostgreSQL must be reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        OwnPostgres { admin, name, url }
    }

    pub async fn drop_database(self) {
        // FORCE: a pool connection still being opened when the pool closed
        // can outlive `close()`, and a plain DROP then waits 5 s and fails
        // ("being accessed by other users"), which says nothing about what
        // a test checks.
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// The test server's SQLite write lock, held by a transaction of a pooled
/// connection until released: whatever writes meanwhile waits for it.
pub struct WriteLock(sqlx::pool::PoolConnection<sqlx::Sqlite>);

impl WriteLock {
    pub async fn take(server: &TestServer) -> WriteLock {
        let waxwing::storage::Store::Sqlite(pool) = server.store() else {
            unreachable!("the test server runs on SQLite")
        };
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .unwrap();
        WriteLock(conn)
    }

    pub async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut *self.0).await.unwrap();
    }
}
