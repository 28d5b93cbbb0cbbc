//! The service's room list (XEP-0045 §6.3, disco#items on the service),
//! paged with Result Set Management (XEP-0059): `max`, `after`, `before`
//! (empty: the last page), `index`; the answer's `<set/>` carries
//! `first` (with its index), `last` and `count`. A page never holds more
//! than `[muc] max_room_list_page` rooms, and a request without RSM gets
//! the first page with a `<set/>` when there are more, so a service with
//! 100,000 rooms never answers with all of them.
//!
//! Rooms are ordered by JID, and `after`/`before` are positions in that
//! order rather than items that must still exist: a room destroyed
//! between two pages does not break the walk. A page costs one pass
//! over the rooms (to filter and count) and a sort of the page only.

use std::cmp::Ordering;

use super::room::Room;
use crate::modules::disco::NS_ITEMS;
use crate::modules::mam::query::NS_RSM;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

/// What a request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    max: Option<usize>,
    after: Option<String>,
    /// `Some("")`: the last page.
    before: Option<String>,
    index: Option<usize>,
}

fn parse(query: &Element) -> Result<Request, StanzaError> {
    let Some(set) = query.get_child("set", NS_RSM) else {
        return Ok(Request::default());
    };
    let number = |name: &str| -> Result<Option<usize>, StanzaError> {
        set.get_child(name, NS_RSM)
            .map(|e| {
                e.text().trim().parse::<usize>().map_err(|_| {
                    StanzaError::with_text(StanzaErrorCondition::BadRequest, "not a number")
                })
            })
            .transpose()
    };
    Ok(Request {
        max: number("max")?,
        after: set.get_child("after", NS_RSM).map(|e| e.text()),
        before: set.get_child("before", NS_RSM).map(|e| e.text()),
        index: number("index")?,
    })
}

/// A room as the list shows it.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub jid: &'a str,
    /// Its `muc#roomconfig_roomname` ('' = none).
    pub name: &'a str,
}

/// The `k` smallest (or largest) by JID, in order.
fn ends(mut v: Vec<Listed<'_>>, k: usize, largest: bool) -> Vec<Listed<'_>> {
    let by_jid = |a: &Listed, b: &Listed| -> Ordering { a.jid.cmp(b.jid) };
    if k < v.len() {
        if largest {
            let at = v.len() - k;
            v.select_nth_unstable_by(at, by_jid);
            v.drain(..at);
        } else {
            v.select_nth_unstable_by(k, by_jid);
            v.truncate(k);
        }
    }
    v.sort_unstable_by(by_jid);
    v
}

/// Whether a room is in the list: public and unlocked.
pub fn is_listed(room: &Room) -> bool {
    room.config.public && !room.locked
}

/// The disco#items answer for `query`: public rooms (neither hidden nor
/// locked) of `domain` among `rooms`.
pub fn answer<'a>(
    rooms: impl Iterator<Item = &'a Room>,
    domain: &str,
    query: &Element,
    page_cap: usize,
) -> Result<Element, StanzaError> {
    let listed = rooms
        .filter(|r| is_listed(r) && r.jid.domain().as_str() == domain)
        .map(|r| Listed {
            jid: r.jid.as_str(),
            name: r.config.name.as_str(),
        })
        .collect();
    answer_listed(listed, query, page_cap)
}

/// The disco#items answer for `query` over the rooms `listed` (a
/// cluster's list, kept in Redis by the rooms' holders).
pub fn answer_listed(
    listed: Vec<Listed<'_>>,
    query: &Element,
    page_cap: usize,
) -> Result<Element, StanzaError> {
    let req = parse(query)?;
    let count = listed.len();
    let max = req.max.unwrap_or(page_cap).min(page_cap);
    let (page, first_index) = if let Some(after) = &req.after {
        let later: Vec<Listed> = listed
            .into_iter()
            .filter(|r| r.jid > after.as_str())
            .collect();
        let index = count - later.len();
        (ends(later, max, false), index)
    } else if let Some(before) = &req.before {
        let earlier: Vec<Listed> = if before.is_empty() {
            listed
        } else {
            listed
                .into_iter()
                .filter(|r| r.jid < before.as_str())
                .collect()
        };
        let page = ends(earlier.clone(), max, true);
        let index = earlier.len() - page.len();
        (page, index)
    } else if let Some(index) = req.index {
        if index > count {
            return Err(StanzaErrorCondition::ItemNotFound.into());
        }
        // The first `index + max`, of which the last `max`.
        let head = ends(listed, index.saturating_add(max), false);
        let page = head.into_iter().skip(index).collect();
        (page, index)
    } else {
        (ends(listed, max, false), 0)
    };
    let mut q = Element::new("query", NS_ITEMS);
    for r in &page {
        let mut item = Element::new("item", NS_ITEMS).with_attr("jid", r.jid);
        if !r.name.is_empty() {
            item.set_attr("name", r.name);
        }
        q.append_child(item);
    }
    let asked = query.get_child("set", NS_RSM).is_some();
    if asked || page.len() < count {
        let mut set = Element::new("set", NS_RSM);
        if let (Some(first), Some(last)) = (page.first(), page.last()) {
            set.append_child(
                Element::new("first", NS_RSM)
                    .with_attr("index", first_index.to_string())
                    .with_text(first.jid),
            );
            set.append_child(Element::new("last", NS_RSM).with_text(last.jid));
        }
        set.append_child(Element::new("count", NS_RSM).with_text(count.to_string()));
        q.append_child(set);
    }
    Ok(q)
}
