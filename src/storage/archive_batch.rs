//! A batch of archive rows in one buffer, on its way to the archive
//! writer.
//!
//! Why one buffer (issue #11): with a row per stanza as Rust values, each
//! archived message cost about a dozen allocations on the routing thread
//! (owner names, ids, peers, resources, the payload), all freed on the
//! writer's thread. With glibc's malloc, freeing on another thread takes
//! the allocating thread's arena lock, so routing threads and the writer
//! queued on those locks: a quarter of the routing threads' time at
//! saturation went to the allocator. Here a message's rows are appended to
//! the batch's bytes (a copy, no allocation once the buffer has grown),
//! and the writer reads them in place as [`RowRef`]s.

use std::ops::Range;

use super::archive_block::{put_row, put_str, Reader, RowView};
use super::{ArchiveKind, ArchiveRow, StorageError};

/// One archive row, borrowed: from an [`ArchiveRow`] or from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub kind: ArchiveKind,
    pub domain: &'a str,
    pub username: &'a str,
    pub peer: &'a str,
    pub id: &'a str,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
    pub resource: &'a str,
    pub outgoing: bool,
    /// The stanza: whole, or without its envelope when `own_resource` is
    /// Some (see `archive_envelope`).
    pub payload: &'a str,
    /// For a payload without its envelope: the owner's resource.
    pub own_resource: Option<&'a str>,
}

impl<'a> From<&'a ArchiveRow> for RowRef<'a> {
    fn from(r: &'a ArchiveRow) -> RowRef<'a> {
        RowRef {
            kind: r.owner.kind,
            domain: &r.owner.domain,
            username: &r.owner.username,
            peer: &r.peer,
            id: &r.id,
            ts: r.ts,
            resource: &r.resource,
            outgoing: r.outgoing,
            payload: &r.payload,
            own_resource: None,
        }
    }
}

impl<'a> RowRef<'a> {
    /// The part a block keeps.
    pub(super) fn view(&self) -> RowView<'a> {
        RowView {
            id: self.id,
            ts: self.ts,
            resource: self.resource,
            outgoing: self.outgoing,
            payload: self.payload,
            own_resource: self.own_resource,
        }
    }
}

/// Rows of whole messages, encoded one after the other.
#[derive(Debug, Default)]
pub struct ArchiveBatch {
    bytes: Vec<u8>,
    /// Rows so far.
    rows: usize,
    /// Where each message's rows end (a row count), in order.
    message_ends: Vec<usize>,
}

impl ArchiveBatch {
    pub fn new() -> ArchiveBatch {
        ArchiveBatch::default()
    }

    /// Appends one row to the message being added.
    pub fn push(&mut self, r: &RowRef<'_>) {
        self.bytes.push(r.kind as u8);
        put_str(&mut self.bytes, r.domain);
        put_str(&mut self.bytes, r.username);
        put_str(&mut self.bytes, r.peer);
        put_row(&mut self.bytes, &r.view());
        self.rows += 1;
    }

    /// Appends the rows of one message and ends it.
    pub fn push_rows(&mut self, rows: &[RowRef<'_>]) {
        for r in rows {
            self.push(r);
        }
        self.end_message();
    }

    /// Ends the message being added (its rows stay together when a failed
    /// batch is written message by message). Nothing if it has no row.
    pub fn end_message(&mut self) {
        if self.message_ends.last().copied().unwrap_or(0) < self.rows {
            self.message_ends.push(self.rows);
        }
    }

    /// Appends `rows` as one message.
    pub fn push_message(&mut self, rows: &[ArchiveRow]) {
        for r in rows {
            self.push(&RowRef::from(r));
        }
        self.end_message();
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn messages(&self) -> usize {
        self.message_ends.len()
    }

    /// Bytes the batch holds.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Empties the batch, keeping its buffers for the next.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows = 0;
        self.message_ends.clear();
    }

    /// The row ranges of its messages, in order.
    pub fn message_ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut start = 0;
        self.message_ends.iter().map(move |&end| {
            let r = start..end;
            start = end;
            r
        })
    }

    /// Its rows, read in place.
    pub fn decode(&self) -> Result<Vec<RowRef<'_>>, StorageError> {
        let (mut rows, mut encoded) = (Vec::new(), Vec::new());
        self.decode_into(&mut rows, &mut encoded)?;
        Ok(rows)
    }

    /// Its rows, read in place, and each row's encoding as a block holds
    /// it (copied into blocks as it is), into vectors the caller keeps
    /// (emptied first): the archive writer reuses them from one
    /// commit to the next instead of touching fresh memory each time.
    pub(super) fn decode_into<'b>(
        &'b self,
        out: &mut Vec<RowRef<'b>>,
        encoded: &mut Vec<&'b [u8]>,
    ) -> Result<(), StorageError> {
        let corrupt = || StorageError::Invalid("archive batch is corrupt".into());
        let mut r = Reader {
            buf: &self.bytes,
            at: 0,
        };
        out.clear();
        encoded.clear();
        out.reserve(self.rows);
        encoded.reserve(self.rows);
        while r.at < self.bytes.len() {
            let kind = match r.bytes(1).ok_or_else(corrupt)?[0] {
                0 => ArchiveKind::User,
                1 => ArchiveKind::Room,
                _ => return Err(corrupt()),
            };
            let domain = r.str().ok_or_else(corrupt)?;
            let username = r.str().ok_or_else(corrupt)?;
            let peer = r.str().ok_or_else(corrupt)?;
            let start = r.at;
            let v = r.row().ok_or_else(corrupt)?;
            encoded.push(&self.bytes[start..r.at]);
            out.push(RowRef {
                kind,
                domain,
                username,
                peer,
                id: v.id,
                ts: v.ts,
                resource: v.resource,
                outgoing: v.outgoing,
                payload: v.payload,
                own_resource: v.own_resource,
            });
        }
        Ok(())
    }
}

/// An empty vector with `v`'s allocation, for items of another lifetime
/// (or any type of the same size and alignment, which the standard
/// library's in-place `collect` reuses the buffer for; otherwise simply a
/// new vector). What lets the archive writer keep vectors of borrowed rows
/// across batches.
pub(super) fn reuse<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_messages_come_back_as_pushed() {
        let a = RowRef {
            kind: ArchiveKind::User,
            domain: "d",
            username: "ann",
            peer: "bob@d",
            id: "0123",
            ts: 42,
            resource: "phone",
            outgoing: true,
            payload: "<message/>",
            own_resource: None,
        };
        let b = RowRef {
            kind: ArchiveKind::Room,
            username: "room",
            outgoing: false,
            ts: -1,
            ..a
        };
        let mut batch = ArchiveBatch::new();
        batch.push(&a);
        batch.push(&b);
        batch.end_message();
        batch.end_message();
        batch.push(&a);
        batch.end_message();
        assert_eq!(batch.rows(), 3);
        assert_eq!(batch.messages(), 2);
        assert_eq!(batch.decode().unwrap(), vec![a, b, a]);
        assert_eq!(batch.message_ranges().collect::<Vec<_>>(), vec![0..2, 2..3]);
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.decode().unwrap().is_empty());
    }

    /// A row kept without its envelope goes through the batch and a block
    /// as it is, and reads back whole.
    #[test]
    fn a_row_without_its_envelope_stays_so() {
        let kept = "<message type='chat' id='m1'><body>hi</body></message>";
        let received = RowRef {
            kind: ArchiveKind::User,
            domain: "d",
            username: "bob",
            peer: "ann@d",
            id: "0123",
            ts: 42,
            resource: "phone",
            outgoing: false,
            payload: kept,
            own_resource: Some("tablet"),
        };
        let sent = RowRef {
            username: "ann",
            peer: "bob@d",
            resource: "tablet",
            outgoing: true,
            own_resource: Some("phone"),
            ..received
        };
        let mut batch = ArchiveBatch::new();
        batch.push_rows(&[received, sent]);
        assert_eq!(batch.messages(), 1);
        let rows = batch.decode().unwrap();
        assert_eq!(rows, vec![received, sent]);
        let whole = "<message xmlns='jabber:client' from='ann@d/phone' to='bob@d/tablet' type='chat' id='m1'><body>hi</body></message>";
        for r in &rows {
            assert_eq!(r.view().stanza(r.username, r.domain, r.peer), whole);
        }
        // Encoded again (the pool's path), a row stays as it was read.
        let mut block = Vec::new();
        super::super::archive_block::encode_row(&mut block, &rows[0].view());
        let again = super::super::archive_block::decode(&block).unwrap();
        assert_eq!(again, vec![rows[0].view()]);
    }
}
