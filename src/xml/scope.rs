//! Namespace scopes (XML Namespaces §5): which URI each prefix, and the default
//! namespace, is bound to at the current point of the document.
//!
//! Declarations live in one string plus a list of offsets, pushed per open element and
//! truncated when it closes, so resolving names costs no allocation per element.

use super::NS_XML;

/// The stack of in-scope namespace declarations.
#[derive(Debug, Default)]
pub(super) struct NsScope {
    /// Prefixes and URIs back to back; `decls` index into it.
    text: String,
    /// (prefix start, prefix end = URI start, URI end). The default namespace has prefix "".
    decls: Vec<(usize, usize, usize)>,
    /// Lengths of `decls` and `text` when each open element was entered.
    marks: Vec<(usize, usize)>,
}

impl NsScope {
    /// Start the scope of a new element.
    pub(super) fn enter(&mut self) {
        self.marks.push((self.decls.len(), self.text.len()));
    }

    /// End the innermost element's scope, dropping its declarations.
    pub(super) fn leave(&mut self) {
        if let Some((decls, text)) = self.marks.pop() {
            self.decls.truncate(decls);
            self.text.truncate(text);
        }
    }

    /// Bind `prefix` ("" for the default namespace) to `uri` in the innermost scope.
    pub(super) fn declare(&mut self, prefix: &str, uri: &str) {
        let start = self.text.len();
        self.text.push_str(prefix);
        let split = self.text.len();
        self.text.push_str(uri);
        self.decls.push((start, split, self.text.len()));
    }

    /// URI bound to `prefix`; "" (no namespace) for an undeclared default namespace,
    /// `None` for an undeclared prefix.
    pub(super) fn resolve(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(NS_XML);
        }
        for &(start, split, end) in self.decls.iter().rev() {
            if &self.text[start..split] == prefix {
                return Some(&self.text[split..end]);
            }
        }
        if prefix.is_empty() {
            Some("")
        } else {
            None
        }
    }

    /// Forget every scope.
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.decls.clear();
        self.marks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadowing_and_leaving() {
        let mut s = NsScope::default();
        assert_eq!(s.resolve(""), Some(""));
        s.enter();
        s.declare("", "jabber:client");
        s.declare("stream", "urn:s");
        s.enter();
        s.declare("", "urn:x");
        assert_eq!(s.resolve(""), Some("urn:x"));
        assert_eq!(s.resolve("stream"), Some("urn:s"));
        assert_eq!(s.resolve("nope"), None);
        assert_eq!(s.resolve("xml"), Some(NS_XML));
        s.leave();
        assert_eq!(s.resolve(""), Some("jabber:client"));
        s.leave();
        assert_eq!(s.resolve("stream"), None);
    }
}
