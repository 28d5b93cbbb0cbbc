//! The element tree: [`Element`] and [`Node`], with namespaces already resolved.
//!
//! Names are stored as local name + namespace URI, never as prefixes, so code that
//! inspects stanzas compares `(name, ns)` pairs and does not care how the peer spelled
//! them. Serialization lives in `writer.rs`.
//!
//! The namespace URI is an `Arc<str>`: the parser hands every element in one declared
//! namespace the same allocation, so a stanza of many elements costs one copy of each
//! URI, however long, not one per element. Names and attributes are `CompactString`s,
//! held inline up to 24 bytes: a tag name, an attribute name, an id, a `type` and most
//! JIDs cost no heap allocation (and no free on whichever thread drops the stanza).

use std::sync::Arc;

use compact_str::CompactString;

/// One child of an element: a nested element or a run of character data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, unescaped (CDATA sections arrive here as plain text too).
    Text(String),
}

/// A parsed XML element with resolved namespaces.
///
/// Attributes keep their qualified names as written (`to`, `xml:lang`, `a:b`). A plain
/// `xmlns` is never an attribute: it is `ns`. An `xmlns:p` attribute appears only where
/// a prefixed attribute `p:…` on the same element needs it, so the element can be written
/// anywhere and keep its meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub(super) name: CompactString,
    pub(super) ns: Arc<str>,
    pub(super) attrs: Vec<(CompactString, CompactString)>,
    pub(super) children: Vec<Node>,
}

impl Element {
    /// An empty element with local name `name` in namespace `ns` ("" for none).
    /// `ns` may be a `&str`, a `String` or an already shared `Arc<str>`.
    pub fn new(name: impl Into<CompactString>, ns: impl Into<Arc<str>>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder form of [`set_attr`](Self::set_attr).
    pub fn with_attr(
        mut self,
        key: impl Into<CompactString>,
        value: impl Into<CompactString>,
    ) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder form of [`append_child`](Self::append_child).
    pub fn with_child(mut self, child: Element) -> Self {
        self.append_child(child);
        self
    }

    /// Builder form of [`append_text`](Self::append_text).
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.append_text(text);
        self
    }

    /// Local name (without prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace URI, "" if the element is in no namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// True if this element has local name `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && &*self.ns == ns
    }

    /// Value of the attribute with qualified name `key` (e.g. `"to"`, `"xml:lang"`).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes in document order, as (qualified name, unescaped value).
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Set an attribute, replacing an existing one with the same qualified name.
    pub fn set_attr(&mut self, key: impl Into<CompactString>, value: impl Into<CompactString>) {
        let key = key.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((key, value)),
        }
    }

    /// Remove an attribute, returning its value if it was there.
    pub fn remove_attr(&mut self, key: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(k, _)| k == key)?;
        Some(self.attrs.remove(i).1.into_string())
    }

    /// Element children only, in document order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Element children only, mutable.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// All child nodes (elements and text) in document order.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// All child nodes, mutable.
    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.children
    }

    /// First child element named `name` in namespace `ns`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    /// First child element named `name` in namespace `ns`, mutable.
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|e| e.is(name, ns))
    }

    /// Remove and return the first child element named `name` in namespace `ns`.
    pub fn remove_child(&mut self, name: &str, ns: &str) -> Option<Element> {
        let i = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if e.is(name, ns)))?;
        match self.children.remove(i) {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
    }

    /// Append a child element.
    pub fn append_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Append character data. Adjacent text is merged into one node, so a parse of the
    /// written form compares equal to the original.
    pub fn append_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(last)) => last.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }

    /// Moves this element and every descendant in namespace `from` into
    /// `to`: a stanza keeps its meaning when it crosses from a stream whose
    /// default namespace is `from` to one whose default is `to` (XEP-0114's
    /// `jabber:component:accept` and `jabber:client`). Iterative, so any
    /// depth is safe.
    pub fn move_namespace(&mut self, from: &str, to: &str) {
        // One allocation for the whole tree, shared by every element moved.
        let to: Arc<str> = Arc::from(to);
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            if &*e.ns == from {
                e.ns = to.clone();
            }
            stack.extend(e.children_mut());
        }
    }

    /// Concatenation of the direct text children (not descendants).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_accessors() {
        let mut e = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_attr("type", "chat")
            .with_child(Element::new("body", "jabber:client").with_text("hi"))
            .with_text(" x")
            .with_text("y");
        assert!(e.is("message", "jabber:client"));
        assert_eq!(e.attr("to"), Some("a@b"));
        e.set_attr("to", "c@d");
        assert_eq!(e.attr("to"), Some("c@d"));
        assert_eq!(e.attrs().count(), 2);
        assert_eq!(e.remove_attr("type").as_deref(), Some("chat"));
        assert_eq!(e.attr("type"), None);
        assert_eq!(e.text(), " xy");
        assert_eq!(e.nodes().len(), 2, "adjacent text is merged");
        assert_eq!(
            e.get_child("body", "jabber:client").map(|b| b.text()),
            Some("hi".to_string())
        );
        assert!(e.get_child("body", "urn:other").is_none());
        if let Some(b) = e.get_child_mut("body", "jabber:client") {
            b.append_text("!");
        }
        assert_eq!(
            e.children().next().map(|b| b.text()).as_deref(),
            Some("hi!")
        );
        let mut moved = e.clone().with_child(Element::new("x", "urn:other"));
        moved.move_namespace("jabber:client", "jabber:component:accept");
        assert!(moved.is("message", "jabber:component:accept"));
        assert!(moved.get_child("body", "jabber:component:accept").is_some());
        assert!(moved.get_child("x", "urn:other").is_some());
        assert!(e.remove_child("body", "jabber:client").is_some());
        assert_eq!(e.children().count(), 0);
    }
}
