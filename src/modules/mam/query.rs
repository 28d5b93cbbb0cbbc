//! Archive queries (XEP-0313 §4, #extended fields, XEP-0059 paging): the
//! form and the RSM set parsed into a [`Query`], run as one page read and
//! exact counts, answered with result messages and a `<fin/>`.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid, Jid};
use time::format_description::well_known::Rfc3339;

use crate::modules::NS_DATA;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::{ArchiveFilter, ArchiveOwner, ArchivedItem};
use crate::xml::{Element, NS_CLIENT};

use super::{id, NS_MAM};

pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";

/// Which page of the result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// From the start, or right after an id (RSM `<after>`).
    Forward(Option<String>),
    /// The last page (`<before/>`), or right before an id.
    Backward(Option<String>),
    /// The page whose first item is at this position (RSM `<index/>`).
    Index(u32),
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub query_id: Option<String>,
    pub filter: ArchiveFilter,
    pub page: Page,
    pub max: u32,
    pub flip: bool,
}

fn bad(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::BadRequest, text)
}

/// An XEP-0082 DateTime as microseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, StanzaError> {
    let t = time::OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map_err(|_| bad("not an XEP-0082 DateTime"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| bad("time out of range"))
}

fn field_values(field: &Element) -> Vec<String> {
    field
        .children()
        .filter(|c| c.is("value", NS_DATA))
        .map(|v| v.text())
        .collect()
}

fn single(field: &Element) -> Result<String, StanzaError> {
    match field_values(field).as_slice() {
        [v] => Ok(v.trim().to_string()),
        _ => Err(bad("one value expected")),
    }
}

/// Parses `<query/>` (type set). `default_page` and `max_page` from the
/// config; `max_ids` bounds the `ids` field.
pub fn parse(
    query: &Element,
    default_page: u32,
    max_page: u32,
    max_ids: usize,
) -> Result<Query, StanzaError> {
    let mut filter = ArchiveFilter::default();
    if let Some(form) = query.get_child("x", NS_DATA) {
        for field in form.children().filter(|c| c.is("field", NS_DATA)) {
            let var = field.attr("var").unwrap_or_default();
            match var {
                "FORM_TYPE" => {
                    if single(field)? != NS_MAM {
                        return Err(bad("FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    let jid = Jid::new(&single(field)?).map_err(|_| bad("'with' is not a JID"))?;
                    filter.peer = Some(jid.bare().to_string());
                    if let Some(r) = jid.resource() {
                        filter.resource = Some(r.as_str().to_string());
                    }
                }
                "start" => {
                    let t = parse_time(&single(field)?)?;
                    filter.id_from = Some(id::time_prefix(t));
                }
                "end" => {
                    // Inclusive: everything before the next microsecond.
                    let t = parse_time(&single(field)?)?;
                    filter.id_until = Some(id::time_prefix(t.saturating_add(1)));
                }
                "after-id" => filter.after = Some(single(field)?),
                "before-id" => filter.before = Some(single(field)?),
                "ids" => {
                    let ids = field_values(field);
                    if ids.is_empty() {
                        return Err(bad("'ids' needs at least one value"));
                    }
                    if ids.len() > max_ids {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::PolicyViolation,
                            format!("at most {max_ids} ids per query"),
                        ));
                    }
                    filter.ids = ids.into_iter().map(|i| i.trim().to_string()).collect();
                }
                // Asking for groupchat in a user's archive: it holds none.
                "include-groupchat" => {}
                _ => return Err(bad("unsupported field")),
            }
        }
    }
    let max_page = max_page.max(1);
    let mut max = default_page.clamp(1, max_page);
    let mut page = Page::Forward(None);
    if let Some(set) = query.get_child("set", NS_RSM) {
        if let Some(m) = set.get_child("max", NS_RSM) {
            let n: u32 = m
                .text()
                .trim()
                .parse()
                .map_err(|_| bad("<max/> is not a number"))?;
            // XEP-0059 §2.6: a server may return fewer than asked.
            max = n.min(max_page);
        }
        let after = set.get_child("after", NS_RSM).map(|a| a.text());
        let before = set.get_child("before", NS_RSM).map(|b| b.text());
        page = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(bad("<before/> and <after/> together are not supported"))
            }
            (Some(a), None) => Page::Forward(Some(a.trim().to_string())),
            (None, Some(b)) if b.trim().is_empty() => Page::Backward(None),
            (None, Some(b)) => Page::Backward(Some(b.trim().to_string())),
            (None, None) => Page::Forward(None),
        };
        if let Some(i) = set.get_child("index", NS_RSM) {
            if page != Page::Forward(None) {
                return Err(bad("<index/> goes without <before/> and <after/>"));
            }
            let n: u32 = i
                .text()
                .trim()
                .parse()
                .map_err(|_| bad("<index/> is not a number"))?;
            page = Page::Index(n);
        }
    }
    Ok(Query {
        query_id: query.attr("queryid").map(str::to_string),
        filter,
        page,
        max,
        flip: query.get_child("flip-page", NS_MAM).is_some(),
    })
}

/// The form a client fills in (`<query/>` type get).
pub fn form() -> Element {
    let field = |var: &str, ty: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", ty)
    };
    Element::new("query", NS_MAM).with_child(
        Element::new("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(
                field("FORM_TYPE", "hidden")
                    .with_child(Element::new("value", NS_DATA).with_text(NS_MAM)),
            )
            .with_child(field("with", "jid-single"))
            .with_child(field("start", "text-single"))
            .with_child(field("end", "text-single"))
            .with_child(field("before-id", "text-single"))
            .with_child(field("after-id", "text-single"))
            .with_child(
                field("ids", "list-multi").with_child(
                    Element::new("validate", NS_VALIDATE)
                        .with_attr("datatype", "xs:string")
                        .with_child(Element::new("open", NS_VALIDATE)),
                ),
            ),
    )
}

/// One page of the answer: the items in the order sent, and the `<fin/>`.
pub struct Answer {
    pub items: Vec<ArchivedItem>,
    pub fin: Element,
}

/// Runs `q` on `owner`'s archive. Ids a client names (after-id,
/// before-id, ids, RSM after/before) must exist: item-not-found otherwise.
pub async fn run(server: &Server, owner: &ArchiveOwner, q: &Query) -> Result<Answer, StanzaError> {
    let internal = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, "archive query");
        StanzaError::from(StanzaErrorCondition::InternalServerError)
    };
    let not_found = || StanzaError::from(StanzaErrorCondition::ItemNotFound);
    let page_id = match &q.page {
        Page::Forward(a) | Page::Backward(a) => a.as_ref(),
        Page::Index(_) => None,
    };
    let named = q
        .filter
        .after
        .iter()
        .chain(&q.filter.before)
        .chain(&q.filter.ids)
        .chain(page_id);
    for i in named {
        if !id::well_formed(i) || !server.store.archive_has(owner, i).await.map_err(internal)? {
            return Err(not_found());
        }
    }

    let count = server
        .store
        .archive_count(owner, &q.filter)
        .await
        .map_err(internal)?;
    let resolved;
    let q = match q.page {
        Page::Index(n) => {
            let page = page_at(server, owner, &q.filter, n)
                .await
                .map_err(|e| e.unwrap_or_else(internal_of))?;
            resolved = Query { page, ..q.clone() };
            &resolved
        }
        _ => q,
    };
    let mut page_filter = q.filter.clone();
    let backward = matches!(q.page, Page::Backward(_));
    match &q.page {
        Page::Forward(Some(a)) => page_filter.after = Some(tighter(&page_filter.after, a, true)),
        Page::Backward(Some(b)) => {
            page_filter.before = Some(tighter(&page_filter.before, b, false))
        }
        _ => {}
    }
    let mut items = if q.max == 0 {
        Vec::new()
    } else {
        server
            .store
            .archive_page(owner, &page_filter, backward, q.max)
            .await
            .map_err(internal)?
    };
    if backward {
        items.reverse();
    }
    // The index of the first item: how many in the result set precede it.
    let index = match items.first() {
        None => None,
        Some(first) => Some(match &q.page {
            Page::Forward(None) => 0,
            Page::Backward(None) => count - items.len() as i64,
            Page::Forward(Some(_)) | Page::Backward(Some(_)) | Page::Index(_) => {
                let mut before_first = q.filter.clone();
                before_first.before = Some(tighter(&q.filter.before, &first.id, false));
                server
                    .store
                    .archive_count(owner, &before_first)
                    .await
                    .map_err(internal)?
            }
        }),
    };
    // Complete: this page reaches the end of the result set in the
    // direction of paging (the last item forward, the first backward).
    let complete = match index {
        None => true,
        Some(i) if backward => i == 0,
        Some(i) => i + items.len() as i64 >= count,
    };
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    if q.flip {
        items.reverse();
    }
    let mut set = Element::new("set", NS_RSM);
    if let (Some(index), Some(first), Some(last)) = (index, ids.first(), ids.last()) {
        let (first, last) = if q.flip { (last, first) } else { (first, last) };
        set.append_child(
            Element::new("first", NS_RSM)
                .with_attr("index", index.to_string())
                .with_text(first.clone()),
        );
        set.append_child(Element::new("last", NS_RSM).with_text(last.clone()));
    }
    set.append_child(Element::new("count", NS_RSM).with_text(count.to_string()));
    let mut fin = Element::new("fin", NS_MAM);
    if let Some(qid) = &q.query_id {
        fin.set_attr("queryid", qid);
    }
    if complete {
        fin.set_attr("complete", "true");
    }
    fin.append_child(set);
    Ok(Answer { items, fin })
}

fn internal_of() -> StanzaError {
    StanzaError::from(StanzaErrorCondition::InternalServerError)
}

/// The page whose first item is the `n`th (from 0) of the result set:
/// the one after the item at `n - 1`, which the store finds by offset
/// over ids alone (bounded by `[mam] max_index`, since an offset still
/// walks the index). An index at or past the end gives the page after the
/// last item: empty, as XEP-0059 §2.5 asks.
async fn page_at(
    server: &Server,
    owner: &ArchiveOwner,
    filter: &ArchiveFilter,
    n: u32,
) -> Result<Page, Option<StanzaError>> {
    let c = &server.config().mam;
    if n > c.max_index {
        return Err(Some(StanzaError::with_text(
            StanzaErrorCondition::FeatureNotImplemented,
            format!("paging by index only up to {}", c.max_index),
        )));
    }
    if n == 0 {
        return Ok(Page::Forward(None));
    }
    let before_first = server
        .store
        .archive_id_at(owner, filter, n - 1)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "archive query");
            None
        })?;
    Ok(Page::Forward(before_first))
}

/// The narrower of an existing exclusive id bound and a new one.
fn tighter(existing: &Option<String>, new: &str, lower: bool) -> String {
    match existing {
        Some(e) if lower && e.as_str() > new => e.clone(),
        Some(e) if !lower && e.as_str() < new => e.clone(),
        _ => new.to_string(),
    }
}

/// The `<message/>` carrying one result to the querying resource.
pub fn result_message(
    owner: &BareJid,
    to: &FullJid,
    query_id: Option<&str>,
    item: &ArchivedItem,
    max_depth: usize,
) -> Option<Element> {
    let forwarded_msg = crate::modules::xml_from_storage(&item.payload, max_depth)?
        .into_iter()
        .find(|e| e.is("message", NS_CLIENT))?;
    let stamp = stamp(item.ts)?;
    let mut result = Element::new("result", NS_MAM).with_attr("id", &item.id);
    if let Some(q) = query_id {
        result.set_attr("queryid", q);
    }
    result.append_child(
        Element::new("forwarded", NS_FORWARD)
            .with_child(Element::new("delay", NS_DELAY).with_attr("stamp", stamp))
            .with_child(forwarded_msg),
    );
    Some(
        Element::new("message", NS_CLIENT)
            .with_attr("from", owner.as_str())
            .with_attr("to", to.as_str())
            .with_child(result),
    )
}

/// Microseconds since the Unix epoch as an XEP-0082 DateTime.
pub fn stamp(ts: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1000)
        .ok()?
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .ok()
}

/// The archive's metadata (§ "Archive metadata", #extended): its first
/// and last messages, or an empty element for an empty archive.
pub async fn metadata(server: &Server, owner: &ArchiveOwner) -> Result<Element, StanzaError> {
    let internal = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, "archive metadata");
        StanzaError::from(StanzaErrorCondition::InternalServerError)
    };
    let everything = ArchiveFilter::default();
    let mut meta = Element::new("metadata", NS_MAM);
    for (name, newest_first) in [("start", false), ("end", true)] {
        let page = server
            .store
            .archive_page(owner, &everything, newest_first, 1)
            .await
            .map_err(internal)?;
        if let Some(item) = page.first() {
            meta.append_child(
                Element::new(name, NS_MAM)
                    .with_attr("id", &item.id)
                    .with_attr("timestamp", stamp(item.ts).unwrap_or_default()),
            );
        }
    }
    Ok(meta)
}
