//! The archive writer's own SQLite connection, driven through SQLite's C
//! API (the same bundled library sqlx links).
//!
//! Why not sqlx here: measured under callgrind (BENCHMARKS.md, "Archive
//! writes without sqlx"), sqlx spent more instructions per archived row
//! than SQLite did — the SQL text of every multi-row statement built and
//! hashed again each batch, every text value copied twice before SQLite
//! copied it a third time, and a hop to sqlx's worker thread per
//! statement. This connection prepares its statements once, binds the
//! rows' strings where they lie (`SQLITE_STATIC`: SQLite reads them during
//! the step, before the borrow ends), and runs one prepared statement per
//! block and per owner inside one transaction per batch. The caller runs a
//! batch on a blocking thread (one hand-over per batch, not per statement).
//!
//! Only the writer's batches go through here; every other archive
//! statement stays on sqlx.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ops::Range;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use libsqlite3_sys as ffi;

use super::archive::{block_inputs, Owners};
use super::archive_batch::{reuse, ArchiveBatch, RowRef};
use super::archive_block::{build_into, BlockInput};
use super::StorageError;

/// Adds an owner's rows to its count, creating the owner, and gives its id.
const OWNER_UPSERT: &str = "INSERT INTO archive_owners (kind, domain, username, n) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (kind, domain, username) \
     DO UPDATE SET n = archive_owners.n + excluded.n RETURNING owner_id";

/// The insert of one block.
const BLOCK_INSERT: &str =
    "INSERT INTO archive_blocks (owner_id, peer, first_id, last_id, n, rows) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// One prepared statement, finalized on drop.
struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: prepared on this connection, finalized once; a null
        // pointer is a no-op for sqlite3_finalize.
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

/// An open connection and its prepared statements.
pub struct SqliteArchiveConn {
    // Declared before `db`: statements are finalized before the close.
    begin: Stmt,
    commit: Stmt,
    rollback: Stmt,
    owner: Stmt,
    block: Stmt,
    /// Checkpoints on a thread of its own, when set.
    checkpointer: Option<Checkpointer>,
    scratch: Scratch,
    db: Db,
    /// Frames in the WAL after the last commit, set by the WAL hook.
    /// Boxed: SQLite holds its address. Declared after `db` so the hook's
    /// connection is closed before it is freed.
    wal_frames: Box<AtomicI32>,
}

/// What a commit decodes and builds, kept from one commit to the next
/// (emptied, not freed): the writer's vectors of tens of thousands of rows
/// and its megabytes of blocks, allocated afresh each commit, cost it more
/// in page faults and `realloc` than the work itself (`perf`, issue #11).
/// They hold at most what the largest batch needed.
#[derive(Default)]
struct Scratch {
    rows: Vec<RowRef<'static>>,
    encoded: Vec<&'static [u8]>,
    inputs: Vec<BlockInput<'static>>,
    /// The blocks' bytes, one after the other.
    arena: Vec<u8>,
    /// A row's group key, as `Owners::grouped` builds it.
    key: String,
}

/// The connection handle, closed on drop (after the statements).
struct Db(*mut ffi::sqlite3);

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: opened by sqlite3_open_v2 (even a failed open returns a
        // handle to close), after every statement was finalized (`Stmt`
        // fields drop first); sqlite3_close accepts null.
        unsafe { ffi::sqlite3_close(self.0) };
    }
}

// SAFETY: the bundled SQLite is built thread-safe (SQLITE_THREADSAFE=1),
// and this value is used by one thread at a time (it is moved to the
// blocking thread that runs a batch and back, never shared), which is
// what SQLITE_OPEN_NOMUTEX requires.
unsafe impl Send for SqliteArchiveConn {}

impl std::fmt::Debug for SqliteArchiveConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteArchiveConn")
    }
}

/// The connection's last error as a storage error.
fn error(db: *mut ffi::sqlite3, rc: c_int, doing: &str) -> StorageError {
    // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by the
    // connection, valid until the next call on it; copied at once.
    let msg = unsafe {
        let p = ffi::sqlite3_errmsg(db);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    StorageError::Invalid(format!("sqlite archive writer, {doing}: {msg} (code {rc})"))
}

impl SqliteArchiveConn {
    /// Opens the database file at `path` (created and migrated already by
    /// the pool) with `synchronous` FULL or NORMAL and `cache_kib` of page
    /// cache, waiting up to `busy_ms` for another writer's lock.
    pub fn open(
        path: &Path,
        synchronous_full: bool,
        cache_kib: u64,
        busy_ms: u32,
        checkpoint_pages: u32,
    ) -> Result<SqliteArchiveConn, StorageError> {
        let db = open_handle(path, synchronous_full, busy_ms)?;
        exec(db.0, &format!("PRAGMA cache_size = -{};", cache_kib.max(1)))?;
        let wal_frames = Box::new(AtomicI32::new(0));
        let checkpointer = match checkpoint_pages {
            0 => None,
            n => {
                // After a burst the WAL file keeps its size unless told:
                // cut back to what the checkpoint threshold holds when the
                // WAL starts over.
                exec(
                    db.0,
                    &format!("PRAGMA journal_size_limit = {};", u64::from(n) * 4096),
                )?;
                // SAFETY: an open handle; the hook's argument is the boxed
                // counter, which outlives the handle (field order).
                unsafe {
                    ffi::sqlite3_wal_hook(
                        db.0,
                        Some(count_frames),
                        &*wal_frames as *const AtomicI32 as *mut std::ffi::c_void,
                    )
                };
                Some(Checkpointer::start(path, synchronous_full, busy_ms, n)?)
            }
        };
        Ok(SqliteArchiveConn {
            checkpointer,
            scratch: Scratch::default(),
            wal_frames,
            begin: prepare(db.0, "BEGIN IMMEDIATE")?,
            commit: prepare(db.0, "COMMIT")?,
            rollback: prepare(db.0, "ROLLBACK")?,
            owner: prepare(db.0, OWNER_UPSERT)?,
            block: prepare(db.0, BLOCK_INSERT)?,
            db,
        })
    }

    /// Inserts the rows `range` of `batch`, as [`insert`](Self::insert)
    /// does, decoding them into the kept vectors.
    pub fn insert_batch(
        &mut self,
        batch: &ArchiveBatch,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        let mut rows = reuse(std::mem::take(&mut self.scratch.rows));
        let mut encoded = reuse(std::mem::take(&mut self.scratch.encoded));
        let r = batch.decode_into(&mut rows, &mut encoded).and_then(|()| {
            self.insert(
                rows.get(range.clone()).unwrap_or_default(),
                encoded.get(range).unwrap_or_default(),
            )
        });
        self.scratch.rows = reuse(rows);
        self.scratch.encoded = reuse(encoded);
        r
    }

    /// Inserts `rows` and adds them to their owners' counts, in one
    /// transaction: all or nothing.
    pub fn insert(&mut self, rows: &[RowRef<'_>], encoded: &[&[u8]]) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (owners, groups) = Owners::grouped(rows, &mut self.scratch.key);
        self.done(&self.begin, "begin")?;
        let written = self.write(rows, encoded, &owners, &groups);
        let r = written.and_then(|()| self.done(&self.commit, "commit"));
        if r.is_ok() {
            self.after_commit();
        }
        if r.is_err() {
            // Nothing of the batch stays; the connection is ready for the next.
            // SAFETY: an open handle.
            if unsafe { ffi::sqlite3_get_autocommit(self.db.0) } == 0 {
                let _ = self.done(&self.rollback, "rollback");
            }
        }
        r
    }

    fn write(
        &mut self,
        rows: &[RowRef<'_>],
        encoded: &[&[u8]],
        owners: &Owners<'_>,
        groups: &[u32],
    ) -> Result<(), StorageError> {
        let db = self.db.0;
        let mut ids = Vec::with_capacity(owners.list.len());
        let s = self.owner.0;
        for (owner, added) in &owners.list {
            // SAFETY: a statement of this connection; the bound strings
            // outlive the step and the reset that follows it.
            let id = unsafe {
                let mut rc = ffi::sqlite3_bind_int(s, 1, owner.kind as c_int);
                rc |= bind_text(s, 2, owner.domain);
                rc |= bind_text(s, 3, owner.username);
                rc |= ffi::sqlite3_bind_int64(s, 4, *added);
                if rc != ffi::SQLITE_OK {
                    ffi::sqlite3_reset(s);
                    return Err(error(db, rc, "bind owner"));
                }
                let rc = ffi::sqlite3_step(s);
                let id = (rc == ffi::SQLITE_ROW).then(|| ffi::sqlite3_column_int64(s, 0));
                let reset = ffi::sqlite3_reset(s);
                match id {
                    Some(id) if reset == ffi::SQLITE_OK => id,
                    _ => return Err(error(db, rc, "owner")),
                }
            };
            ids.push(id);
        }
        let s = self.block.0;
        let encoded = (encoded.len() == rows.len()).then_some(encoded);
        let mut inputs = reuse(std::mem::take(&mut self.scratch.inputs));
        block_inputs(rows, encoded, owners, &ids, &mut inputs);
        let blocks = build_into(&inputs, Some(groups), &mut self.scratch.arena);
        self.scratch.inputs = reuse(inputs);
        let arena = &self.scratch.arena;
        for b in blocks {
            let bytes = &arena[b.bytes];
            // SAFETY: as above; the block's bytes live until the loop's
            // next turn, after the reset.
            unsafe {
                let mut rc = ffi::sqlite3_bind_int64(s, 1, b.owner_id);
                rc |= bind_text(s, 2, b.peer);
                rc |= bind_text(s, 3, b.first_id);
                rc |= bind_text(s, 4, b.last_id);
                rc |= ffi::sqlite3_bind_int64(s, 5, b.n);
                rc |= ffi::sqlite3_bind_blob64(
                    s,
                    6,
                    bytes.as_ptr() as *const std::ffi::c_void,
                    bytes.len() as u64,
                    ffi::SQLITE_STATIC(),
                );
                if rc != ffi::SQLITE_OK {
                    ffi::sqlite3_reset(s);
                    return Err(error(db, rc, "bind block"));
                }
            }
            self.done(&self.block, "block")?;
        }
        Ok(())
    }

    /// Hands the WAL to the checkpointer once it holds `pages` frames;
    /// past four times that (the checkpointer is behind, e.g. a slow
    /// disk), checkpoints here, so the WAL stays bounded and the writer
    /// slows down with the disk instead of running ahead of it.
    fn after_commit(&self) {
        let Some(c) = &self.checkpointer else { return };
        let frames = self.wal_frames.load(Ordering::Relaxed);
        if frames < c.pages {
            return;
        }
        if frames >= c.pages.saturating_mul(4) {
            // SAFETY: an open handle, outside any transaction.
            unsafe { checkpoint(self.db.0) };
            return;
        }
        // Full: a checkpoint is already asked for.
        if let Err(TrySendError::Disconnected(())) = c.wake.try_send(()) {
            tracing::warn!("archive checkpointer stopped");
        }
    }

    /// Runs a statement that returns no row, and resets it.
    fn done(&self, stmt: &Stmt, doing: &str) -> Result<(), StorageError> {
        // SAFETY: a statement of this connection, with its values bound.
        let (rc, reset) = unsafe {
            let rc = ffi::sqlite3_step(stmt.0);
            (rc, ffi::sqlite3_reset(stmt.0))
        };
        if rc == ffi::SQLITE_DONE && reset == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db.0, rc, doing))
        }
    }
}

/// Binds `s` without a copy: SQLite reads it during the next step only,
/// and every caller resets the statement before the borrow ends.
unsafe fn bind_text(stmt: *mut ffi::sqlite3_stmt, i: c_int, s: &str) -> c_int {
    ffi::sqlite3_bind_text64(
        stmt,
        i,
        s.as_ptr() as *const c_char,
        s.len() as u64,
        ffi::SQLITE_STATIC(),
        ffi::SQLITE_UTF8 as u8,
    )
}

fn prepare(db: *mut ffi::sqlite3, sql: &str) -> Result<Stmt, StorageError> {
    let mut stmt = ptr::null_mut();
    // SAFETY: an open handle and a buffer of the given length; the
    // statement is owned by `Stmt` from here on.
    let rc = unsafe {
        ffi::sqlite3_prepare_v3(
            db,
            sql.as_ptr() as *const c_char,
            sql.len() as c_int,
            ffi::SQLITE_PREPARE_PERSISTENT,
            &mut stmt,
            ptr::null_mut(),
        )
    };
    let stmt = Stmt(stmt);
    if rc != ffi::SQLITE_OK || stmt.0.is_null() {
        return Err(error(db, rc, "prepare"));
    }
    Ok(stmt)
}

fn exec(db: *mut ffi::sqlite3, sql: &str) -> Result<(), StorageError> {
    let c = CString::new(sql).map_err(|_| StorageError::Invalid("NUL in SQL".into()))?;
    // SAFETY: an open handle and a C string; no callback.
    let rc = unsafe { ffi::sqlite3_exec(db, c.as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
    if rc != ffi::SQLITE_OK {
        return Err(error(db, rc, "set up"));
    }
    Ok(())
}

/// Opens the database file read-write (never creating it) with
/// `synchronous` FULL or NORMAL, waiting up to `busy_ms` for another
/// connection's lock.
fn open_handle(path: &Path, synchronous_full: bool, busy_ms: u32) -> Result<Db, StorageError> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| StorageError::Invalid("database path holds a NUL byte".into()))?;
    let mut handle = ptr::null_mut();
    // SAFETY: a valid C string and an out-pointer; the handle is owned
    // by `Db` from here on, whatever the result.
    let rc = unsafe {
        ffi::sqlite3_open_v2(
            path.as_ptr(),
            &mut handle,
            ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
            ptr::null(),
        )
    };
    let db = Db(handle);
    if rc != ffi::SQLITE_OK {
        return Err(error(db.0, rc, "open"));
    }
    // SAFETY: an open handle.
    unsafe { ffi::sqlite3_busy_timeout(db.0, busy_ms.min(i32::MAX as u32) as c_int) };
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    exec(db.0, &format!("PRAGMA synchronous = {sync};"))?;
    Ok(db)
}

/// The WAL hook: keeps the frame count for `after_commit`. Returning
/// SQLITE_OK, it replaces SQLite's automatic checkpoint on this connection.
unsafe extern "C" fn count_frames(
    arg: *mut std::ffi::c_void,
    _db: *mut ffi::sqlite3,
    _name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `arg` is the connection's boxed counter (see `open`).
    (*(arg as *const AtomicI32)).store(frames, Ordering::Relaxed);
    ffi::SQLITE_OK
}

/// A passive checkpoint: copies what it can of the WAL into the database
/// without waiting for readers or the writer.
unsafe fn checkpoint(db: *mut ffi::sqlite3) -> c_int {
    ffi::sqlite3_wal_checkpoint_v2(
        db,
        ptr::null(),
        ffi::SQLITE_CHECKPOINT_PASSIVE,
        ptr::null_mut(),
        ptr::null_mut(),
    )
}

/// A thread with a connection of its own that checkpoints the WAL when the
/// writer asks. Why apart: a checkpoint writes the pages back into the
/// database file and syncs it, which waits for the disk; on the writer's
/// thread that wait held up every commit behind it (BENCHMARKS.md). The
/// thread ends when the writer's connection drops the sender.
struct Checkpointer {
    wake: SyncSender<()>,
    pages: i32,
}

impl Checkpointer {
    fn start(
        path: &Path,
        synchronous_full: bool,
        busy_ms: u32,
        pages: u32,
    ) -> Result<Checkpointer, StorageError> {
        let db = open_handle(path, synchronous_full, busy_ms)?;
        let (wake, asked) = mpsc::sync_channel::<()>(1);
        let db = SendDb(db);
        std::thread::Builder::new()
            .name("waxwing-checkpoint".into())
            .spawn(move || {
                let db = db;
                while asked.recv().is_ok() {
                    // SAFETY: this thread's own open handle.
                    let rc = unsafe { checkpoint(db.0 .0) };
                    if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_BUSY {
                        tracing::warn!(error = %error(db.0 .0, rc, "checkpoint"), "archive checkpoint");
                    }
                }
            })
            .map_err(|e| StorageError::Invalid(format!("checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake,
            pages: pages.min(i32::MAX as u32) as i32,
        })
    }
}

/// The checkpointer's connection, moved to its thread once.
struct SendDb(Db);
// SAFETY: used by the one thread it is moved to, never shared (what
// SQLITE_OPEN_NOMUTEX requires).
unsafe impl Send for SendDb {}
