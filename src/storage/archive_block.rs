//! Archive blocks: the archived stanzas of one owner with one peer that
//! the writer commits together, kept as one database row.
//!
//! Why blocks (issue #11): a row per stanza cost the archive writer a
//! table row and two index entries per stanza, each landing at its owner's
//! place in the index; at saturation that was a single thread's whole time
//! and held chat at a third of its speed with the archive off. A block
//! costs that once for up to [`MAX_ROWS`] stanzas.
//!
//! What keeps queries exact: the stanzas of a block are in id order, its
//! row records its first and last ids and how many it holds, and every id
//! of a block lies within [`SPAN_US`] of its first id (ids carry their time,
//! `modules::mam::id`). So the blocks that may hold an id at or above a
//! bound are those whose first id is at or above [`floor_for`] that bound,
//! a range of the (owner, first id) index, however blocks of different
//! peers or batches interleave.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use super::archive_envelope as envelope;
use super::StorageError;
use crate::modules::mam::id;

/// The most time (microseconds) between the first and the last id of a
/// block. Small enough that a query's boundary reads few blocks, larger
/// than a writer's batch lasts.
pub const SPAN_US: i64 = 4_000_000;
/// Stanzas per block at most: a query decodes a block whole.
pub const MAX_ROWS: usize = 256;
/// Encoded bytes a block stops growing at.
pub const MAX_BYTES: usize = 64 * 1024;

/// The first byte of every block: its encoding. Format 2 added rows
/// kept without their envelope (`archive_envelope`); format 1 blocks,
/// written before, read alike.
const FORMAT: u8 = 2;
const FORMAT_1: u8 = 1;

/// A row's flags byte: the owner sent it.
const OUTGOING: u8 = 1;
/// A row's flags byte: its payload is kept without its envelope, and the
/// owner's resource follows the flags.
const SPLIT: u8 = 2;

/// One archived stanza inside a block, borrowed from the block's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowView<'a> {
    pub id: &'a str,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
    pub resource: &'a str,
    pub outgoing: bool,
    /// The stanza as stored: whole, or without its envelope when
    /// `own_resource` is Some ([`RowView::stanza`] puts it back).
    pub payload: &'a str,
    /// For a payload kept without its envelope: the owner's resource (""
    /// for the bare JID).
    pub own_resource: Option<&'a str>,
}

impl<'a> RowView<'a> {
    /// The stanza, whole, for a row of the archive of `username@domain`
    /// with `peer`.
    pub fn stanza(&self, username: &str, domain: &str, peer: &str) -> Cow<'a, str> {
        envelope::stanza(
            self.payload,
            self.own_resource,
            &envelope::Sides {
                username,
                domain,
                peer,
                peer_resource: self.resource,
                outgoing: self.outgoing,
            },
        )
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `row` to a block's bytes (starting the block if empty).
pub fn encode_row(out: &mut Vec<u8>, row: &RowView<'_>) {
    if out.is_empty() {
        out.push(FORMAT);
    }
    put_row(out, row);
}

/// Appends `row`'s encoding (what a block holds per stanza).
pub(super) fn put_row(out: &mut Vec<u8>, row: &RowView<'_>) {
    put_head(out, row, row.own_resource);
    put_str(out, row.payload);
}

/// A row's encoding up to its payload.
fn put_head(out: &mut Vec<u8>, row: &RowView<'_>, own_resource: Option<&str>) {
    put_str(out, row.id);
    // Zigzag: small magnitudes either side of zero stay short.
    put_varint(out, ((row.ts << 1) ^ (row.ts >> 63)) as u64);
    put_str(out, row.resource);
    let outgoing = if row.outgoing { OUTGOING } else { 0 };
    match own_resource {
        None => out.push(outgoing),
        Some(r) => {
            out.push(outgoing | SPLIT);
            put_str(out, r);
        }
    }
}

/// Reads a block's bytes from the front.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub(super) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    pub(super) fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.varint()?).ok()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }

    pub(super) fn row(&mut self) -> Option<RowView<'a>> {
        let id = self.str()?;
        let z = self.varint()?;
        let ts = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let resource = self.str()?;
        let flags = self.bytes(1)?[0];
        if flags & !(OUTGOING | SPLIT) != 0 {
            return None;
        }
        let own_resource = match flags & SPLIT {
            0 => None,
            _ => Some(self.str()?),
        };
        let payload = self.str()?;
        Some(RowView {
            id,
            ts,
            resource,
            outgoing: flags & OUTGOING != 0,
            payload,
            own_resource,
        })
    }
}

/// The stanzas of a block, in id order.
pub fn decode(block: &[u8]) -> Result<Vec<RowView<'_>>, StorageError> {
    let corrupt = || StorageError::Invalid("archive block is corrupt".into());
    match block.first() {
        Some(&FORMAT | &FORMAT_1) => {}
        Some(other) => {
            return Err(StorageError::Invalid(format!(
                "archive block of unknown format {other}"
            )))
        }
        None => return Err(corrupt()),
    }
    let mut r = Reader { buf: block, at: 1 };
    let mut rows = Vec::new();
    while r.at < block.len() {
        rows.push(r.row().ok_or_else(corrupt)?);
    }
    Ok(rows)
}

/// The bytes of a block holding `rows` (in their order).
pub fn encode(rows: &[RowView<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        encode_row(&mut out, r);
    }
    out
}

/// A stanza on its way into a block: its owner's id, its peer, itself.
#[derive(Debug, Clone, Copy)]
pub struct BlockInput<'a> {
    pub owner_id: i64,
    pub peer: &'a str,
    pub row: RowView<'a>,
    /// `row` encoded already (as [`put_row`] writes it), when it comes
    /// from a batch: copied as it is.
    pub encoded: Option<&'a [u8]>,
}

/// A block to insert.
#[derive(Debug, PartialEq, Eq)]
pub struct NewBlock<'a> {
    pub owner_id: i64,
    pub peer: &'a str,
    pub first_id: &'a str,
    pub last_id: &'a str,
    pub n: i64,
    pub rows: Vec<u8>,
}

/// A block laid out in an arena of bytes ([`build_into`]): its bytes are
/// `arena[bytes]`.
#[derive(Debug, Clone)]
pub struct BlockSpan<'a> {
    pub owner_id: i64,
    pub peer: &'a str,
    pub first_id: &'a str,
    pub last_id: &'a str,
    pub n: i64,
    pub bytes: Range<usize>,
}

impl<'a> BlockSpan<'a> {
    /// The block with its bytes copied out of `arena`.
    pub fn to_new_block(&self, arena: &[u8]) -> NewBlock<'a> {
        NewBlock {
            owner_id: self.owner_id,
            peer: self.peer,
            first_id: self.first_id,
            last_id: self.last_id,
            n: self.n,
            rows: arena[self.bytes.clone()].to_vec(),
        }
    }
}

/// Groups stanzas into blocks: sorted by (owner, peer, id), each run of one
/// owner and peer cut where a block would pass [`MAX_ROWS`], [`MAX_BYTES`]
/// or [`SPAN_US`]. An id not shaped like ours (no time to bound a block
/// by) gets a block of its own.
pub fn build<'a>(inputs: &[BlockInput<'a>]) -> Vec<NewBlock<'a>> {
    let mut arena = Vec::new();
    build_into(inputs, None, &mut arena)
        .iter()
        .map(|b| b.to_new_block(&arena))
        .collect()
}

/// [`build`], the blocks' bytes laid one after the other in `arena`
/// (emptied first). Why an arena: the archive writer builds a thousand
/// blocks a commit; each in a vector of its own, grown as stanzas joined,
/// cost it more in `realloc` and in page faults on fresh memory than the
/// copying itself (`perf`, issue #11). The writer keeps its arena from one
/// commit to the next.
///
/// `groups`, when the caller has it, numbers each input's (owner, peer)
/// from 0 in order of first appearance (equal pairs, equal numbers): the
/// grouping is not worked out again.
pub fn build_into<'a>(
    inputs: &[BlockInput<'a>],
    groups: Option<&[u32]>,
    arena: &mut Vec<u8>,
) -> Vec<BlockSpan<'a>> {
    arena.clear();
    let mut out: Vec<BlockSpan<'a>> = Vec::new();
    // The open block's first time, when it may take more stanzas.
    let mut open_since: Option<i64> = None;
    let groups = match groups {
        Some(g) if g.len() == inputs.len() => Some(g),
        _ => None,
    };
    for &i in &in_block_order(inputs, groups) {
        let input = &inputs[i as usize];
        let t = id::time_of(input.row.id);
        let joins = match (out.last(), open_since, t) {
            (Some(b), Some(since), Some(t)) => {
                b.owner_id == input.owner_id
                    && b.peer == input.peer
                    && (b.n as usize) < MAX_ROWS
                    && b.bytes.len() < MAX_BYTES
                    && t - since <= SPAN_US
            }
            _ => false,
        };
        if !joins {
            open_since = t;
            arena.push(FORMAT);
            out.push(BlockSpan {
                owner_id: input.owner_id,
                peer: input.peer,
                first_id: input.row.id,
                last_id: input.row.id,
                n: 0,
                bytes: arena.len() - 1..arena.len(),
            });
        }
        if let Some(b) = out.last_mut() {
            match input.encoded {
                Some(bytes) => arena.extend_from_slice(bytes),
                None => put_row(arena, &input.row),
            }
            b.n += 1;
            b.last_id = input.row.id;
            b.bytes.end = arena.len();
        }
    }
    out
}

/// The positions of `inputs` ordered by (owner, peer, id). Done as a count
/// sort by (owner, peer) then a sort of each run by id, which is usually
/// sorted already (a batch arrives in about the order ids were handed
/// out): far fewer string comparisons than one sort over all three keys.
fn in_block_order(inputs: &[BlockInput<'_>], known: Option<&[u32]>) -> Vec<u32> {
    // Each group's number, and its first input.
    let (group_of, firsts): (Cow<'_, [u32]>, Vec<u32>) = match known {
        Some(g) => {
            let mut firsts: Vec<u32> = Vec::new();
            for (i, &k) in g.iter().enumerate() {
                if k as usize == firsts.len() {
                    firsts.push(i as u32);
                }
            }
            (Cow::Borrowed(g), firsts)
        }
        None => {
            let mut groups: HashMap<(i64, &str), u32, foldhash::fast::RandomState> =
                HashMap::with_hasher(Default::default());
            let mut firsts = Vec::new();
            let group_of = inputs
                .iter()
                .enumerate()
                .map(|(k, i)| {
                    let next = groups.len() as u32;
                    *groups.entry((i.owner_id, i.peer)).or_insert_with(|| {
                        firsts.push(k as u32);
                        next
                    })
                })
                .collect();
            (Cow::Owned(group_of), firsts)
        }
    };
    // Each group's place among the groups in (owner, peer) order.
    let key = |g: u32| {
        let i = &inputs[firsts[g as usize] as usize];
        (i.owner_id, i.peer)
    };
    let mut sorted: Vec<u32> = (0..firsts.len() as u32).collect();
    sorted.sort_unstable_by_key(|&g| key(g));
    let mut start = vec![0u32; firsts.len() + 1];
    let mut rank = vec![0u32; firsts.len()];
    for (r, &g) in sorted.iter().enumerate() {
        rank[g as usize] = r as u32;
    }
    for &g in group_of.iter() {
        start[rank[g as usize] as usize + 1] += 1;
    }
    for r in 1..start.len() {
        start[r] += start[r - 1];
    }
    let mut order = vec![0u32; inputs.len()];
    let mut next = start.clone();
    for (i, &g) in group_of.iter().enumerate() {
        let r = rank[g as usize] as usize;
        order[next[r] as usize] = i as u32;
        next[r] += 1;
    }
    for w in start.windows(2) {
        let run = &mut order[w[0] as usize..w[1] as usize];
        let id = |k: &u32| inputs[*k as usize].row.id;
        if !run.is_sorted_by_key(id) {
            run.sort_unstable_by_key(id);
        }
    }
    order
}

/// The lowest first id a block holding an id at or above `bound` can have
/// (every id of a block is within [`SPAN_US`] of its first; a block whose
/// first id is not shaped like ours holds that one id only). For a bound
/// not shaped like an id: the start of the archive.
pub fn floor_for(bound: &str) -> String {
    match id::time_of(bound) {
        Some(t) => id::time_prefix(t.saturating_sub(SPAN_US)),
        None => String::new(),
    }
}

/// Above every id of the blocks whose first id is `first` or lower, when
/// `first` is one of ours: what a newest-first scan may stop at.
pub fn ceiling_for(first: &str) -> Option<String> {
    id::time_of(first).map(|t| id::time_prefix(t.saturating_add(SPAN_US + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(id: &'a str, payload: &'a str) -> RowView<'a> {
        RowView {
            id,
            ts: -5,
            resource: "phone",
            outgoing: true,
            payload,
            own_resource: None,
        }
    }

    #[test]
    fn a_block_decodes_to_what_was_encoded() {
        let rows = [
            view("a", "<message>é</message>"),
            RowView {
                ts: i64::MAX,
                outgoing: false,
                resource: "",
                ..view("b", "")
            },
        ];
        let bytes = encode(&rows);
        assert_eq!(decode(&bytes).unwrap(), rows);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let bytes = encode(&[view("a", "<m/>")]);
        assert!(decode(&[]).is_err());
        for cut in 2..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(decode(&wrong).is_err());
        // Lengths past the end, overlong varints, invalid UTF-8.
        assert!(
            decode(&[FORMAT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
        assert!(decode(&[FORMAT, 1, 0xc3]).is_err());
    }

    fn our_id(ts: i64, tail: &str) -> String {
        format!("{}{tail}", id::time_prefix(ts))
    }

    #[test]
    fn blocks_group_owner_and_peer_and_are_cut_by_span_and_size() {
        let ids: Vec<String> = (0..600)
            .map(|i| our_id(1_000_000 + i * 1000, "aaaaaaaa"))
            .collect();
        let far = our_id(1_000_000 + SPAN_US + 600_000, "aaaaaaaa");
        let mut inputs: Vec<BlockInput> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let peer = if i % 2 == 0 { "bob" } else { "carol" };
            inputs.push(BlockInput {
                owner_id: 1 + (i % 3 == 0) as i64,
                peer,
                row: view(id, "<m/>"),
                encoded: None,
            });
        }
        inputs.push(BlockInput {
            owner_id: 1,
            peer: "bob",
            row: view(&far, "<m/>"),
            encoded: None,
        });
        inputs.push(BlockInput {
            owner_id: 1,
            peer: "bob",
            row: view("not-ours", "<m/>"),
            encoded: None,
        });
        inputs.reverse();
        let blocks = build(&inputs);
        assert_eq!(blocks.iter().map(|b| b.n).sum::<i64>(), 602);
        for b in &blocks {
            let rows = decode(&b.rows).unwrap();
            assert_eq!(rows.len() as i64, b.n);
            assert!(rows.len() <= MAX_ROWS);
            assert_eq!(rows[0].id, b.first_id);
            assert_eq!(rows[rows.len() - 1].id, b.last_id);
            assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
            if rows.len() > 1 {
                let span = id::time_of(b.last_id).unwrap() - id::time_of(b.first_id).unwrap();
                assert!(span <= SPAN_US);
                // Every id of the block is found from the floor of its last.
                assert!(floor_for(b.last_id).as_str() <= b.first_id);
                assert!(ceiling_for(b.first_id).unwrap().as_str() > b.last_id);
            }
        }
        // The far stanza and the one without a time are alone in theirs.
        for lone in [far.as_str(), "not-ours"] {
            let b = blocks.iter().find(|b| b.first_id == lone).unwrap();
            assert_eq!(b.n, 1, "{lone}");
        }
        // Owner 2 with bob: i % 6 == 0 (100 of them), one block.
        let two_bob: Vec<_> = blocks
            .iter()
            .filter(|b| b.owner_id == 2 && b.peer == "bob")
            .collect();
        assert_eq!(two_bob.len(), 1);
        assert_eq!(two_bob[0].n, 100);

        // With the grouping given (as the writer gives it), the same blocks.
        let mut seen: Vec<(i64, &str)> = Vec::new();
        let groups: Vec<u32> = inputs
            .iter()
            .map(
                |i| match seen.iter().position(|k| *k == (i.owner_id, i.peer)) {
                    Some(g) => g as u32,
                    None => {
                        seen.push((i.owner_id, i.peer));
                        seen.len() as u32 - 1
                    }
                },
            )
            .collect();
        let mut arena = Vec::new();
        let given: Vec<NewBlock<'_>> = build_into(&inputs, Some(&groups), &mut arena)
            .iter()
            .map(|b| b.to_new_block(&arena))
            .collect();
        assert_eq!(given, blocks);
    }
}
