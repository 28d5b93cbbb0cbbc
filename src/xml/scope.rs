//! Namespace scopes (XML Namespaces §5): which URI each prefix, and the default
//! namespace, is bound to at the current point of the document.
//!
//! Every URI is held once, as an `Arc<str>` that the scope hands out: an element in a
//! declared namespace costs a reference count, not a copy of the URI. A URI declared
//! again while the same text is already held (on the stream header, or earlier in the
//! stanza under construction) is shared too, so re-declaring one namespace on many
//! siblings does not allocate it again. Lookups are hashed (SipHash, keyed per
//! process), so resolving a prefix costs the same however many declarations are in
//! scope.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{heap_cost, NS_XML};

/// Heap bytes an `Arc<str>` of `len` bytes costs: the text plus the two counters.
fn shared_str_cost(len: usize) -> usize {
    heap_cost(len + 2 * std::mem::size_of::<usize>())
}

/// One binding of a prefix, undone when its element closes.
#[derive(Debug)]
struct Decl {
    /// Where the prefix ("" for the default namespace) sits in `NsScope::prefixes`.
    prefix: (usize, usize),
    uri: Arc<str>,
    /// The binding of the same prefix this one shadows (index into `decls`).
    shadowed: Option<usize>,
}

/// The stack of in-scope namespace declarations.
#[derive(Debug)]
pub(super) struct NsScope {
    /// Innermost binding of each declared prefix: index into `decls`.
    current: HashMap<Box<str>, usize>,
    /// Every binding in force, outermost first.
    decls: Vec<Decl>,
    /// Prefix text of `decls`, back to back.
    prefixes: String,
    /// Lengths of `decls` and `prefixes` when each open element was entered.
    marks: Vec<(usize, usize)>,
    /// URIs declared on the stream header: kept for the whole stream.
    stream_uris: HashSet<Arc<str>>,
    /// URIs declared inside the stanza under construction: dropped when it completes.
    stanza_uris: HashSet<Arc<str>>,
    /// The `xml:` namespace and the empty one, handed out without allocating.
    xml: Arc<str>,
    none: Arc<str>,
}

impl Default for NsScope {
    fn default() -> Self {
        NsScope {
            current: HashMap::new(),
            decls: Vec::new(),
            prefixes: String::new(),
            marks: Vec::new(),
            stream_uris: HashSet::new(),
            stanza_uris: HashSet::new(),
            xml: Arc::from(NS_XML),
            none: Arc::from(""),
        }
    }
}

impl NsScope {
    /// Start the scope of a new element.
    pub(super) fn enter(&mut self) {
        self.marks.push((self.decls.len(), self.prefixes.len()));
    }

    /// End the innermost element's scope, dropping its declarations.
    pub(super) fn leave(&mut self) {
        let Some((decls, prefixes)) = self.marks.pop() else {
            return;
        };
        while self.decls.len() > decls {
            let Some(d) = self.decls.pop() else { break };
            let prefix = &self.prefixes[d.prefix.0..d.prefix.1];
            match d.shadowed {
                Some(i) => {
                    if let Some(slot) = self.current.get_mut(prefix) {
                        *slot = i;
                    }
                }
                None => {
                    self.current.remove(prefix);
                }
            }
        }
        self.prefixes.truncate(prefixes);
    }

    /// Declarations in force, over all open elements.
    pub(super) fn in_scope(&self) -> usize {
        self.decls.len()
    }

    /// Bind `prefix` ("" for the default namespace) to `uri` in the innermost scope.
    /// Returns the heap bytes newly spent on the URI: 0 when the same text was
    /// already held and is shared.
    pub(super) fn declare(&mut self, prefix: &str, uri: &str) -> usize {
        let (uri, cost) = self.intern(uri);
        let start = self.prefixes.len();
        self.prefixes.push_str(prefix);
        let index = self.decls.len();
        let shadowed = match self.current.get_mut(prefix) {
            Some(slot) => Some(std::mem::replace(slot, index)),
            None => {
                self.current.insert(prefix.into(), index);
                None
            }
        };
        self.decls.push(Decl {
            prefix: (start, self.prefixes.len()),
            uri,
            shadowed,
        });
        cost
    }

    /// The shared copy of `uri`, and what it cost if it had to be made.
    fn intern(&mut self, uri: &str) -> (Arc<str>, usize) {
        if uri.is_empty() {
            return (self.none.clone(), 0);
        }
        if let Some(u) = self
            .stream_uris
            .get(uri)
            .or_else(|| self.stanza_uris.get(uri))
        {
            return (u.clone(), 0);
        }
        let u: Arc<str> = Arc::from(uri);
        // The stream element is the only open one while its header is read.
        let table = if self.marks.len() <= 1 {
            &mut self.stream_uris
        } else {
            &mut self.stanza_uris
        };
        table.insert(u.clone());
        (u, shared_str_cost(uri.len()))
    }

    /// URI bound to `prefix`; "" (no namespace) for an undeclared default namespace,
    /// `None` for an undeclared prefix.
    pub(super) fn resolve(&self, prefix: &str) -> Option<&Arc<str>> {
        if prefix == "xml" {
            return Some(&self.xml);
        }
        match self.current.get(prefix) {
            Some(&i) => self.decls.get(i).map(|d| &d.uri),
            None if prefix.is_empty() => Some(&self.none),
            None => None,
        }
    }

    /// The stanza under construction is complete: URIs declared inside it are no
    /// longer shared through the scope (elements that use them keep them alive).
    pub(super) fn end_stanza(&mut self) {
        self.stanza_uris = HashSet::new();
    }

    /// Forget every scope.
    pub(super) fn clear(&mut self) {
        self.current = HashMap::new();
        self.decls = Vec::new();
        self.prefixes = String::new();
        self.marks = Vec::new();
        self.stream_uris = HashSet::new();
        self.stanza_uris = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(s: &'a NsScope, p: &str) -> Option<&'a str> {
        s.resolve(p).map(|u| &**u)
    }

    #[test]
    fn shadowing_and_leaving() {
        let mut s = NsScope::default();
        assert_eq!(get(&s, ""), Some(""));
        s.enter();
        s.declare("", "jabber:client");
        s.declare("stream", "urn:s");
        s.enter();
        s.declare("", "urn:x");
        assert_eq!(get(&s, ""), Some("urn:x"));
        assert_eq!(get(&s, "stream"), Some("urn:s"));
        assert_eq!(get(&s, "nope"), None);
        assert_eq!(get(&s, "xml"), Some(NS_XML));
        assert_eq!(s.in_scope(), 3);
        s.leave();
        assert_eq!(get(&s, ""), Some("jabber:client"));
        assert_eq!(s.in_scope(), 2);
        s.leave();
        assert_eq!(get(&s, "stream"), None);
        assert_eq!(get(&s, ""), Some(""));
    }

    #[test]
    fn uris_are_shared_not_copied() {
        let mut s = NsScope::default();
        s.enter();
        assert!(
            s.declare("p", "urn:long") > 0,
            "first declaration allocates"
        );
        s.enter();
        assert_eq!(s.declare("q", "urn:long"), 0, "same text is shared");
        let (a, b) = (s.resolve("p").cloned(), s.resolve("q").cloned());
        assert!(matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
        assert!(s.declare("", "urn:in-stanza") > 0);
        s.leave();
        s.enter();
        assert_eq!(s.declare("", "urn:in-stanza"), 0, "shared within a stanza");
        s.leave();
        s.end_stanza();
        s.enter();
        assert!(
            s.declare("", "urn:in-stanza") > 0,
            "not kept past the stanza"
        );
        assert_eq!(s.declare("r", "urn:long"), 0, "the header's stay shared");
    }
}
