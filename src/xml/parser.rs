//! The stream parser: received bytes in, [`StreamEvent`]s out.
//!
//! `scanner.rs` cuts the input into complete tokens; this file gives them meaning:
//! the stream header, one [`Element`] tree per top-level element, the stream end. It
//! resolves namespace prefixes, decodes entities, and enforces what RFC 6120 §11 and
//! the server's limits demand: no DTDs, comments, processing instructions or undefined
//! entities, UTF-8 only, and the [`ParserLimits`]: stanza size and nesting depth,
//! elements per stanza, attributes and namespace declarations per tag, declarations
//! in scope, name and URI lengths, and a memory budget. Each is checked before the
//! memory it guards is spent: the tree's heap is estimated as it is built (allocator
//! overhead included) and charged before each allocation, so no input makes a stanza
//! cost much more than `max_stanza_memory`. Per tag the work is linear: attributes
//! are read once, at most `max_attributes` of them, and checked for duplicates by
//! hashing when there are many. quick-xml parses the
//! attributes inside a tag and decodes references; the tokens it sees are always
//! complete, so no quick-xml state has to survive between reads.
//!
//! A second `<stream:stream>` start tag inside an open stream (without [`StreamParser::reset`])
//! is rejected as [`ParseError::NotWellFormed`]: it can only be a confused or hostile peer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use quick_xml::escape::{unescape, EscapeError};
use quick_xml::events::attributes::{AttrError, Attribute, Attributes};

use super::element::{Element, Node};
use super::scanner::{is_xml_space, Scanner, TokenKind};
use super::scope::NsScope;
use compact_str::CompactString;

use super::{heap_cost, NS_STREAMS, NS_XML};

/// Why the stream cannot go on; each maps to the RFC 6120 stream error of the same name
/// (`not-well-formed`, `restricted-xml`, `policy-violation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes are not well-formed, namespace-well-formed UTF-8 XML.
    NotWellFormed(String),
    /// XML that RFC 6120 §11.1 forbids on a stream: DTDs, comments, processing
    /// instructions, undefined entity references.
    RestrictedXml(String),
    /// A configured limit ([`ParserLimits`]) was exceeded.
    PolicyViolation(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotWellFormed(m) => write!(f, "not well-formed: {m}"),
            ParseError::RestrictedXml(m) => write!(f, "restricted XML: {m}"),
            ParseError::PolicyViolation(m) => write!(f, "policy violation: {m}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn not_well_formed(msg: impl Into<String>) -> ParseError {
    ParseError::NotWellFormed(msg.into())
}

/// Limits enforced while parsing, before memory is spent on what exceeds them.
///
/// The defaults are the server's defaults (see `[limits]` in `waxwing.example.toml`
/// for why each is what it is); `crate::config::Limits::parser` fills them from the
/// configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Largest top-level element (and stream header tag), in bytes as received.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting; a stanza itself is at depth 1.
    pub max_depth: usize,
    /// Most elements in one top-level element, itself included.
    pub max_elements: usize,
    /// Most attributes on one tag (the stream header's included), namespace
    /// declarations counted.
    pub max_attributes: usize,
    /// Most namespace declarations (`xmlns`, `xmlns:p`) on one tag.
    pub max_ns_declarations: usize,
    /// Most namespace declarations in force at once, the stream header's included.
    pub max_ns_in_scope: usize,
    /// Longest element or attribute name, prefix included, in bytes.
    pub max_name_bytes: usize,
    /// Longest namespace URI, in bytes.
    pub max_ns_uri_bytes: usize,
    /// Most heap memory the tree of one top-level element (or the stream header's
    /// declarations) may take, as estimated while it is built: element structures,
    /// names, attributes, text, and each shared namespace URI once.
    pub max_stanza_memory: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_stanza_bytes: 262_144,
            max_depth: 48,
            max_elements: 2_048,
            max_attributes: 64,
            max_ns_declarations: 16,
            max_ns_in_scope: 128,
            max_name_bytes: 256,
            max_ns_uri_bytes: 512,
            max_stanza_memory: 2 * 262_144,
        }
    }
}

fn policy(msg: impl Into<String>) -> ParseError {
    ParseError::PolicyViolation(msg.into())
}

/// The opening `<stream:stream …>` tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// Local name of the stream element (`stream` when well-behaved).
    pub name: String,
    /// Resolved namespace of the stream element ([`NS_STREAMS`] when well-behaved).
    pub ns: String,
    /// The default namespace declared on it (`jabber:client`, `jabber:server`, …).
    pub default_ns: Option<String>,
    /// `to` attribute.
    pub to: Option<String>,
    /// `from` attribute.
    pub from: Option<String>,
    /// `id` attribute.
    pub id: Option<String>,
    /// `version` attribute.
    pub version: Option<String>,
    /// `xml:lang` attribute.
    pub lang: Option<String>,
    /// `xmlns:p` declarations other than the one binding the stream element's own
    /// prefix, e.g. `("db", "jabber:server:dialback")`.
    pub prefixes: Vec<(String, String)>,
}

/// What the parser found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream header, as soon as its start tag is complete.
    Header(StreamHeader),
    /// A complete direct child of the stream element (stanza, features, SASL, …).
    Stanza(Element),
    /// The stream element was closed.
    End,
}

/// Incremental, sans-I/O parser for one direction of an XMPP stream.
///
/// Feed it bytes as they arrive and drain [`next_event`](Self::next_event) until it
/// returns `Ok(None)`. Buffered input then stays below one read plus
/// `max_stanza_bytes`: an oversized stanza is refused while it is still arriving.
#[derive(Debug)]
pub struct StreamParser {
    scanner: Scanner,
    doc: Document,
    /// Set on the first error; the stream is over and the error is all we say.
    dead: Option<ParseError>,
}

impl StreamParser {
    /// A parser expecting a stream header.
    pub fn new(limits: ParserLimits) -> Self {
        StreamParser {
            scanner: Scanner::new(),
            doc: Document::new(limits),
            dead: None,
        }
    }

    /// Append received bytes. Parsing happens in [`next_event`](Self::next_event).
    pub fn feed(&mut self, data: &[u8]) {
        if self.dead.is_none() {
            self.scanner.feed(data);
        }
    }

    /// Next complete event, `Ok(None)` when more bytes are needed. After an `Err` the
    /// parser is dead and keeps returning that error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                // Nothing more will be parsed: let go of the memory now.
                self.scanner.clear();
                self.scanner.shrink();
                self.doc.clear();
                self.dead = Some(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        if self.doc.pending_end {
            self.doc.pending_end = false;
            self.doc.phase = Phase::Ended;
            return Ok(Some(StreamEvent::End));
        }
        loop {
            let budget = self
                .doc
                .limits
                .max_stanza_bytes
                .saturating_sub(self.doc.used);
            let Some(tok) = self.scanner.next_token(self.doc.text_allowed(), budget)? else {
                return Ok(None);
            };
            if let Some(ev) = self.doc.handle(tok.kind, self.scanner.bytes(&tok))? {
                return Ok(Some(ev));
            }
        }
    }

    /// Forget everything (buffer and state) and expect a new stream header: used after
    /// STARTTLS and SASL success, where bytes sent before the switch must not count.
    pub fn reset(&mut self) {
        self.scanner.clear();
        self.doc.clear();
        self.dead = None;
    }

    /// Bytes currently buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.scanner.buffered()
    }

    /// Is a top-level element begun and not yet complete (in the buffer
    /// or already partly built)? A transport whose units must carry
    /// whole elements (BOSH bodies) checks this after each unit.
    pub fn mid_element(&self) -> bool {
        self.scanner.buffered() > 0 || !self.doc.open.is_empty()
    }

    /// Capacity of the receive buffer, for tests of [`shrink`](Self::shrink).
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.scanner.capacity()
    }

    /// Give back memory of idle buffers: with nothing buffered the receive buffer's
    /// allocation is dropped entirely (it is re-created on the next `feed`).
    pub fn shrink(&mut self) {
        self.scanner.shrink();
        self.doc.shrink();
    }
}

/// Where in the document the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the stream header; `decl_allowed` until an XML declaration was seen.
    Prolog { decl_allowed: bool },
    /// Inside the stream element.
    Stream,
    /// After the stream element closed: only whitespace may follow.
    Ended,
}

/// Document state: open elements, namespace scopes, the stanza under construction.
#[derive(Debug)]
struct Document {
    limits: ParserLimits,
    phase: Phase,
    /// The header was an empty-element tag: `End` is owed right after `Header`.
    pending_end: bool,
    scope: NsScope,
    /// Qualified names of the open elements (stream element first), back to back,
    /// for matching end tags as written.
    names: String,
    name_starts: Vec<usize>,
    /// Elements of the stanza being built; `open[0]` is the stanza.
    open: Vec<Element>,
    /// Bytes of the current top-level element (or header) consumed so far.
    used: usize,
    /// Elements of the current top-level element started so far.
    elements: usize,
    /// Estimated heap bytes of the current top-level element's tree (or of the
    /// header's declarations), charged before each allocation it stands for.
    memory: usize,
}

/// One attribute of a tag as written: qualified name and raw (undecoded) value.
type RawAttr<'a> = (&'a str, &'a str);

/// A tag's attributes as written: on the stack for a usual tag (a stanza
/// has a handful), so reading one costs no allocation.
type RawAttrs<'a> = smallvec::SmallVec<[RawAttr<'a>; LINEAR_SCAN_MAX]>;

/// Size of one attribute in an element's list (its two strings' heads).
const ATTR_PAIR: usize = std::mem::size_of::<(CompactString, CompactString)>();

/// At or below this many attributes a pairwise duplicate check is cheaper than hashing.
const LINEAR_SCAN_MAX: usize = 8;

impl Document {
    fn new(limits: ParserLimits) -> Self {
        Document {
            limits,
            phase: Phase::Prolog { decl_allowed: true },
            pending_end: false,
            scope: NsScope::default(),
            names: String::new(),
            name_starts: Vec::new(),
            open: Vec::new(),
            used: 0,
            elements: 0,
            memory: 0,
        }
    }

    fn clear(&mut self) {
        self.phase = Phase::Prolog { decl_allowed: true };
        self.pending_end = false;
        self.scope.clear();
        self.names.clear();
        self.name_starts.clear();
        self.open = Vec::new();
        self.used = 0;
        self.elements = 0;
        self.memory = 0;
    }

    fn shrink(&mut self) {
        if self.open.is_empty() {
            self.open = Vec::new();
        }
    }

    /// A top-level element (or the header) is done: the next one starts from zero.
    fn next_top_level(&mut self) {
        self.used = 0;
        self.elements = 0;
        self.memory = 0;
        self.scope.end_stanza();
    }

    /// Account for `bytes` of heap about to be spent on the tree under construction.
    fn charge(&mut self, bytes: usize) -> Result<(), ParseError> {
        self.within_budget(bytes)?;
        self.memory += bytes;
        Ok(())
    }

    /// Whether `bytes` more would still fit in the stanza's memory budget.
    fn within_budget(&self, bytes: usize) -> Result<(), ParseError> {
        if self.memory.saturating_add(bytes) > self.limits.max_stanza_memory {
            return Err(policy(format!(
                "element would take more than {} bytes of memory",
                self.limits.max_stanza_memory
            )));
        }
        Ok(())
    }

    /// Character data is part of the document only inside a stanza.
    fn text_allowed(&self) -> bool {
        !self.open.is_empty()
    }

    fn handle(&mut self, kind: TokenKind, raw: &[u8]) -> Result<Option<StreamEvent>, ParseError> {
        self.used += raw.len();
        let tok = checked_str(raw)?;
        // The scanner guarantees each kind's delimiters are there; `get` keeps a broken
        // guarantee from becoming a panic.
        let inner = |from: usize, trim_end: usize| {
            tok.get(from..tok.len().saturating_sub(trim_end))
                .ok_or_else(|| not_well_formed("truncated token"))
        };
        match kind {
            TokenKind::Text => {
                let text = decode(tok, false)?;
                self.append_text(text)?;
                Ok(None)
            }
            TokenKind::CData => {
                if self.open.is_empty() {
                    return Err(not_well_formed("CDATA section outside of a stanza"));
                }
                let text = normalize_line_ends(inner(9, 3)?).into_owned();
                self.append_text(text)?;
                Ok(None)
            }
            TokenKind::Pi => self.processing_instruction(inner(2, 2)?),
            TokenKind::StartTag => {
                let content = inner(1, 1)?;
                match content.strip_suffix('/') {
                    Some(content) => self.start_tag(content, true),
                    None => self.start_tag(content, false),
                }
            }
            TokenKind::EndTag => self.end_tag(inner(2, 1)?),
        }
    }

    fn append_text(&mut self, text: String) -> Result<(), ParseError> {
        if self.open.is_empty() || text.is_empty() {
            return Ok(());
        }
        let last_text_room = match self.open.last().and_then(|p| p.children.last()) {
            Some(Node::Text(last)) => Some((last.len(), last.capacity())),
            _ => None,
        };
        match last_text_room {
            // Adjacent text (around a CDATA section) extends the last text node.
            Some((len, cap)) => {
                let needed = len.saturating_add(text.len());
                let grow = if needed > cap {
                    needed.max(cap.saturating_mul(2)) - len
                } else {
                    0
                };
                self.charge(heap_cost(len + grow).saturating_sub(heap_cost(cap)))?;
                if let Some(Node::Text(last)) =
                    self.open.last_mut().and_then(|p| p.children.last_mut())
                {
                    last.reserve_exact(grow);
                    last.push_str(&text);
                }
                Ok(())
            }
            None => {
                self.charge(heap_cost(text.capacity()))?;
                self.push_child(Node::Text(text))
            }
        }
    }

    /// Attach `node` to the innermost open element, charging the growth of its
    /// child list (which is grown here, by doubling, so the charge is exact).
    fn push_child(&mut self, node: Node) -> Result<(), ParseError> {
        let (len, cap) = match self.open.last() {
            Some(parent) => (parent.children.len(), parent.children.capacity()),
            None => return Ok(()),
        };
        let grow = if len == cap { cap.max(4) } else { 0 };
        let size = std::mem::size_of::<Node>();
        self.charge(
            heap_cost(cap.saturating_add(grow).saturating_mul(size))
                .saturating_sub(heap_cost(cap.saturating_mul(size))),
        )?;
        if let Some(parent) = self.open.last_mut() {
            parent.children.reserve_exact(grow);
            parent.children.push(node);
        }
        Ok(())
    }

    /// Only `<?xml …?>` before the stream header is allowed (RFC 6120 §11.1, §11.5).
    fn processing_instruction(&mut self, body: &str) -> Result<Option<StreamEvent>, ParseError> {
        let target_len = body.bytes().position(is_xml_space).unwrap_or(body.len());
        if self.phase != (Phase::Prolog { decl_allowed: true }) || &body[..target_len] != "xml" {
            return Err(ParseError::RestrictedXml(
                "processing instructions are not allowed".into(),
            ));
        }
        self.phase = Phase::Prolog {
            decl_allowed: false,
        };
        let mut version = None;
        // Three names are allowed, each once: flags, not quick-xml's pairwise check,
        // which `version='1.0'` repeated to the size limit would make quadratic.
        let mut seen = [false; 3];
        let mut attrs = Attributes::new(body, target_len);
        attrs.with_checks(false);
        for attr in attrs {
            let (key, value) = attr_parts(attr)?;
            let slot = match key {
                "version" => 0,
                "encoding" => 1,
                "standalone" => 2,
                _ => return Err(not_well_formed("malformed XML declaration")),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(not_well_formed(format!("duplicate attribute {key}")));
            }
            match key {
                "version" => version = Some(value),
                "encoding" if !value.eq_ignore_ascii_case("UTF-8") => {
                    return Err(not_well_formed(format!("unsupported encoding {value}")))
                }
                _ => {}
            }
        }
        match version {
            Some(v) if v.starts_with("1.") => Ok(None),
            _ => Err(not_well_formed("XML declaration without version 1.x")),
        }
    }

    /// The attributes of a tag, counted and checked (names, duplicates) before any
    /// of them is decoded. Linear in the tag's length: at most `max_attributes` are
    /// read, and duplicates are found by hashing when there are many.
    fn read_attributes<'a>(
        &self,
        content: &'a str,
        name_len: usize,
    ) -> Result<RawAttrs<'a>, ParseError> {
        let mut attrs = RawAttrs::new();
        let mut projected = 0usize;
        let mut parsed = Attributes::new(content, name_len);
        // quick-xml's own duplicate check compares each attribute with every earlier one.
        parsed.with_checks(false);
        for attr in parsed {
            if attrs.len() >= self.limits.max_attributes {
                return Err(policy(format!(
                    "more than {} attributes on one element",
                    self.limits.max_attributes
                )));
            }
            let (key, value) = attr_parts(attr)?;
            self.check_name_len(key)?;
            // What this attribute will cost in the tree, checked before this list
            // and the duplicate check grow with it.
            projected =
                projected.saturating_add(ATTR_PAIR + heap_cost(key.len()) + heap_cost(value.len()));
            self.within_budget(projected)?;
            attrs.push((key, value));
        }
        let duplicate = if attrs.len() <= LINEAR_SCAN_MAX {
            attrs
                .iter()
                .enumerate()
                .find(|(i, (k, _))| attrs[..*i].iter().any(|(o, _)| o == k))
                .map(|(_, (k, _))| *k)
        } else {
            let mut seen = HashSet::with_capacity(attrs.len());
            attrs.iter().map(|(k, _)| *k).find(|k| !seen.insert(*k))
        };
        match duplicate {
            Some(k) => Err(not_well_formed(format!("duplicate attribute {k}"))),
            None => Ok(attrs),
        }
    }

    fn check_name_len(&self, name: &str) -> Result<(), ParseError> {
        if name.len() > self.limits.max_name_bytes {
            return Err(policy(format!(
                "name longer than {} bytes",
                self.limits.max_name_bytes
            )));
        }
        Ok(())
    }

    /// Bind the namespace declarations among `attrs` in a new scope. They apply to
    /// the element's own name and attributes wherever they are written in the tag.
    fn declare_namespaces(&mut self, attrs: &[RawAttr<'_>]) -> Result<(), ParseError> {
        self.scope.enter();
        let mut declared = 0;
        for &(key, value) in attrs {
            let prefix = match key.strip_prefix("xmlns") {
                Some("") => "",
                Some(rest) => match rest.strip_prefix(':') {
                    Some(prefix) => prefix,
                    None => continue,
                },
                None => continue,
            };
            declared += 1;
            if declared > self.limits.max_ns_declarations {
                return Err(policy(format!(
                    "more than {} namespace declarations on one element",
                    self.limits.max_ns_declarations
                )));
            }
            if self.scope.in_scope() >= self.limits.max_ns_in_scope {
                return Err(policy(format!(
                    "more than {} namespace declarations in scope",
                    self.limits.max_ns_in_scope
                )));
            }
            let uri = decode(value, true)?;
            if uri.len() > self.limits.max_ns_uri_bytes {
                return Err(policy(format!(
                    "namespace longer than {} bytes",
                    self.limits.max_ns_uri_bytes
                )));
            }
            if !prefix.is_empty() || key != "xmlns" {
                check_prefix_binding(prefix, &uri)?;
            }
            let cost = self.scope.declare(prefix, &uri);
            self.charge(cost)?;
        }
        Ok(())
    }

    fn start_tag(&mut self, content: &str, empty: bool) -> Result<Option<StreamEvent>, ParseError> {
        if self.phase == Phase::Ended {
            return Err(not_well_formed("element after the end of the stream"));
        }
        let in_stream = self.phase == Phase::Stream;
        // Checked before building anything: a 5,000-deep nesting stops at max_depth.
        if in_stream && self.open.len() >= self.limits.max_depth {
            return Err(policy(format!(
                "elements nested deeper than {}",
                self.limits.max_depth
            )));
        }
        if in_stream {
            self.elements += 1;
            if self.elements > self.limits.max_elements {
                return Err(policy(format!(
                    "more than {} elements in one stanza",
                    self.limits.max_elements
                )));
            }
        }
        let name_len = content
            .bytes()
            .position(is_xml_space)
            .unwrap_or(content.len());
        let qname = &content[..name_len];
        self.check_name_len(qname)?;
        check_name(qname)?;

        let attrs = self.read_attributes(content, name_len)?;
        self.declare_namespaces(&attrs)?;
        let (prefix, local) = split_qname(qname);
        let ns = self
            .scope
            .resolve(prefix)
            .cloned()
            .ok_or_else(|| not_well_formed(format!("undeclared namespace prefix {prefix}:")))?;

        if !in_stream {
            return self.stream_header(&attrs, qname, prefix, local, &ns, empty);
        }
        if self.open.is_empty() && local == "stream" && &*ns == NS_STREAMS {
            return Err(not_well_formed("stream header inside an open stream"));
        }

        let el = self.build_element(local, ns, &attrs)?;
        if empty {
            self.scope.leave();
            return self.close(el);
        }
        self.name_starts.push(self.names.len());
        self.names.push_str(qname);
        self.open.push(el);
        Ok(None)
    }

    /// The element of a start tag whose namespaces are in scope, its cost charged.
    fn build_element(
        &mut self,
        local: &str,
        ns: Arc<str>,
        attrs: &[RawAttr<'_>],
    ) -> Result<Element, ParseError> {
        // A stanza's own structure; a child's is charged with its parent's child list.
        let own = if self.open.is_empty() {
            std::mem::size_of::<Element>()
        } else {
            0
        };
        self.charge(own + heap_cost(local.len()))?;
        // Written out again (once per recipient), an element in another
        // namespace than its parent's carries `xmlns='…'`: the shared URI is
        // free in memory but not on the wire. Charged here, so a stanza's
        // written form stays within the budget too (fuzzing found 2,000
        // siblings in a long prefixed namespace: 13 KB in, 2 MB out).
        if self.open.last().is_some_and(|parent| *parent.ns != *ns) {
            self.charge(ns.len())?;
        }
        let mut el = Element::new(local, ns);
        let plain = |k: &&str| *k != "xmlns" && !k.starts_with("xmlns:");
        let count = attrs.iter().filter(|(k, _)| plain(k)).count();
        self.charge(heap_cost(count.saturating_mul(ATTR_PAIR)))?;
        // A stanza gets its `from` stamped by the router: room for it now,
        // not a `realloc` of the list then.
        el.attrs.reserve_exact(count + usize::from(own > 0));
        // Prefixes of prefixed attributes whose binding the element carries.
        let mut carried: Vec<&str> = Vec::new();
        let mut carried_set: HashSet<&str> = HashSet::new();
        for &(key, value) in attrs.iter().filter(|(k, _)| plain(k)) {
            check_name(key)?;
            let value = decode_attr(value)?;
            // A decoded value keeps its buffer's capacity; an inline one is
            // charged its inline size (24), never less than before.
            self.charge(heap_cost(key.len()) + heap_cost(value.capacity()))?;
            el.attrs.push((CompactString::from(key), value));
            let (prefix, _) = split_qname(key);
            if prefix.is_empty() || prefix == "xml" {
                continue;
            }
            let uri =
                self.scope.resolve(prefix).cloned().ok_or_else(|| {
                    not_well_formed(format!("undeclared namespace prefix {prefix}:"))
                })?;
            let new = if carried.len() < LINEAR_SCAN_MAX {
                !carried.contains(&prefix)
            } else {
                if carried_set.is_empty() {
                    carried_set.extend(carried.iter().copied());
                }
                carried_set.insert(prefix)
            };
            if !new {
                continue;
            }
            carried.push(prefix);
            // Carry the binding on the element itself: its prefix may have been
            // declared on an ancestor or the stream header, which a writer of this
            // element alone would not reproduce.
            let decl = format!("xmlns:{prefix}");
            let (len, cap) = (el.attrs.len(), el.attrs.capacity());
            let grow = if len == cap { cap.max(4) } else { 0 };
            self.charge(
                heap_cost((cap + grow).saturating_mul(ATTR_PAIR))
                    .saturating_sub(heap_cost(cap.saturating_mul(ATTR_PAIR)))
                    + heap_cost(decl.len())
                    + heap_cost(uri.len()),
            )?;
            el.attrs.reserve_exact(grow);
            el.attrs.push((decl.into(), CompactString::from(&*uri)));
        }
        Ok(el)
    }

    fn stream_header(
        &mut self,
        attrs: &[RawAttr<'_>],
        qname: &str,
        prefix: &str,
        local: &str,
        ns: &str,
        empty: bool,
    ) -> Result<Option<StreamEvent>, ParseError> {
        let mut header = StreamHeader {
            name: local.to_owned(),
            ns: ns.to_owned(),
            ..StreamHeader::default()
        };
        for &(key, value) in attrs {
            let slot = match key {
                "xmlns" => &mut header.default_ns,
                "to" => &mut header.to,
                "from" => &mut header.from,
                "id" => &mut header.id,
                "version" => &mut header.version,
                "xml:lang" => &mut header.lang,
                _ => {
                    if let Some(p) = key.strip_prefix("xmlns:") {
                        if p != prefix {
                            header.prefixes.push((p.to_owned(), decode(value, true)?));
                        }
                    }
                    continue;
                }
            };
            *slot = Some(decode(value, true)?);
        }
        self.phase = Phase::Stream;
        self.next_top_level();
        if empty {
            self.pending_end = true;
        } else {
            self.name_starts.push(self.names.len());
            self.names.push_str(qname);
        }
        Ok(Some(StreamEvent::Header(header)))
    }

    fn end_tag(&mut self, content: &str) -> Result<Option<StreamEvent>, ParseError> {
        let name = content.trim_end_matches([' ', '\t', '\n', '\r']);
        let open = match (self.phase, self.name_starts.last()) {
            (Phase::Stream, Some(&start)) => start,
            _ => return Err(not_well_formed(format!("unexpected end tag </{name}>"))),
        };
        if &self.names[open..] != name {
            return Err(not_well_formed(format!(
                "end tag </{name}> does not match <{}>",
                &self.names[open..]
            )));
        }
        self.names.truncate(open);
        self.name_starts.pop();
        self.scope.leave();
        match self.open.pop() {
            Some(el) => self.close(el),
            None => {
                self.phase = Phase::Ended;
                Ok(Some(StreamEvent::End))
            }
        }
    }

    /// A complete element: attach it to its parent, or hand it out if it is top-level.
    fn close(&mut self, el: Element) -> Result<Option<StreamEvent>, ParseError> {
        if self.open.is_empty() {
            self.next_top_level();
            return Ok(Some(StreamEvent::Stanza(el)));
        }
        self.push_child(Node::Element(el))?;
        Ok(None)
    }
}

/// UTF-8 check for a complete token. Tokens start and end on ASCII delimiters, so a
/// character split across reads is whole by now. Control characters were already
/// refused by the scanner; the non-characters U+FFFE and U+FFFF are checked here.
fn checked_str(raw: &[u8]) -> Result<&str, ParseError> {
    let s = std::str::from_utf8(raw).map_err(|_| not_well_formed("invalid UTF-8"))?;
    if !s.is_ascii() && s.contains(['\u{FFFE}', '\u{FFFF}']) {
        return Err(not_well_formed(
            "character U+FFFE/U+FFFF is not allowed in XML",
        ));
    }
    Ok(s)
}

/// XML 1.0 `Char`, for text produced by character references.
fn is_xml_char(c: char) -> bool {
    !matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// XML 1.0 §2.11: `\r\n` and lone `\r` read as `\n`.
fn normalize_line_ends(s: &str) -> Cow<'_, str> {
    if !s.contains('\r') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
}

/// XML 1.0 §3.3.3 (CDATA attribute type): literal white space reads as a space.
fn normalize_attr_space(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| matches!(b, b'\t' | b'\n' | b'\r')) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "))
}

/// Raw text or attribute value to its value: normalize white space, then resolve the
/// predefined entities and character references.
/// An attribute value, decoded as [`decode`] does; one that needs no change
/// (no reference, no whitespace to normalize: nearly all) is copied straight
/// into the element's string, inline when short, without a `String` between.
fn decode_attr(raw: &str) -> Result<CompactString, ParseError> {
    if !raw
        .bytes()
        .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(CompactString::from(raw));
    }
    decode(raw, true).map(CompactString::from)
}

fn decode(raw: &str, attr: bool) -> Result<String, ParseError> {
    let normalized = if attr {
        normalize_attr_space(raw)
    } else {
        normalize_line_ends(raw)
    };
    let unescaped = match unescape(&normalized) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(s)) => Some(s),
        Err(EscapeError::UnrecognizedEntity(_, name)) => {
            return Err(ParseError::RestrictedXml(format!(
                "undefined entity &{name};"
            )))
        }
        Err(e) => return Err(not_well_formed(format!("bad reference: {e}"))),
    };
    match unescaped {
        None => Ok(normalized.into_owned()),
        Some(s) => {
            if let Some(c) = s.chars().find(|&c| !is_xml_char(c)) {
                return Err(not_well_formed(format!(
                    "character reference to U+{:04X}, which is not allowed in XML",
                    u32::from(c)
                )));
            }
            Ok(s)
        }
    }
}

/// Key and raw value of one attribute as `&str`s borrowed from the tag.
fn attr_parts(attr: Result<Attribute<'_>, AttrError>) -> Result<(&str, &str), ParseError> {
    let attr = attr.map_err(|e| not_well_formed(format!("malformed attribute: {e}")))?;
    let key =
        std::str::from_utf8(attr.key.into_inner()).map_err(|_| not_well_formed("invalid UTF-8"))?;
    match attr.value {
        Cow::Borrowed(v) => {
            let v = std::str::from_utf8(v).map_err(|_| not_well_formed("invalid UTF-8"))?;
            Ok((key, v))
        }
        // quick-xml slices values out of the tag; a copy would mean a changed contract.
        Cow::Owned(_) => Err(not_well_formed("unexpected attribute encoding")),
    }
}

fn split_qname(qname: &str) -> (&str, &str) {
    qname.split_once(':').unwrap_or(("", qname))
}

/// A loose XML `QName` check: enough to refuse garbage and misplaced punctuation, while
/// accepting any non-ASCII letters without carrying the full Unicode tables.
fn check_name(name: &str) -> Result<(), ParseError> {
    // Each part of a QName (prefix and local name) is an NCName: it may not
    // start with a digit, `-` or `.` (`p:3x` is no name; fuzzing found the
    // parser taking it and the writer producing `<3x …/>`, which no parser
    // reads back).
    let ncname = |part: &[u8]| match part.first() {
        Some(&first) => {
            !(first.is_ascii_digit() || matches!(first, b'-' | b'.'))
                && part.iter().all(|&c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') || c >= 0x80
                })
        }
        None => false,
    };
    let b = name.as_bytes();
    let valid = match b.iter().position(|&c| c == b':') {
        None => ncname(b),
        Some(i) => ncname(&b[..i]) && ncname(&b[i + 1..]),
    };
    if valid {
        Ok(())
    } else {
        Err(not_well_formed(format!("invalid name {name:?}")))
    }
}

/// XML Namespaces §3 constraints on `xmlns:prefix='uri'`.
fn check_prefix_binding(prefix: &str, uri: &str) -> Result<(), ParseError> {
    if prefix.is_empty() || prefix.contains(':') {
        return Err(not_well_formed(format!("invalid prefix {prefix:?}")));
    }
    check_name(prefix)?;
    if uri.is_empty() {
        return Err(not_well_formed(format!(
            "prefix {prefix}: bound to no namespace"
        )));
    }
    if prefix == "xmlns" || (prefix == "xml") != (uri == NS_XML) {
        return Err(not_well_formed(format!(
            "reserved prefix or namespace in xmlns:{prefix}"
        )));
    }
    Ok(())
}
