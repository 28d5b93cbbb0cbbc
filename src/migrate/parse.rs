//! Streaming reader of XEP-0227 files: hands out one `<user/>` element at a
//! time, with the host it belongs to, so that memory holds one account and
//! never the whole export (which can be gigabytes).
//!
//! It follows XInclude (`<xi:include href=…/>`, relative to the including
//! file), as ejabberd's `export_piefxis` writes a main file that includes
//! one file per host, and the XEP suggests host files including user
//! files. A directory is read as every `*.xml` file in it that no other
//! file there includes (Prosody's `mod_storage_xep0227` writes one
//! `user@host.xml` file per account; Waxwing's export does the same).

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::pie::{is_pie, NS_XINCLUDE};
use crate::xml::{Element, Node};

/// Deepest include chain followed (a loop is refused before that).
const MAX_INCLUDE_DEPTH: usize = 8;
/// Deepest element nesting inside a `<user/>`.
const MAX_USER_DEPTH: usize = 96;

/// A `<user/>` read from a file.
#[derive(Debug)]
pub struct UserElement {
    pub host: String,
    pub element: Element,
    /// Where it was read from, for messages.
    pub file: PathBuf,
}

/// What [`PieReader::next_user`] yields: a user, or why one (or the rest
/// of a file) could not be read.
#[derive(Debug)]
pub enum ReadItem {
    User(UserElement),
    /// A user that is skipped (too large, outside any host); the rest of
    /// the file is still read.
    Skipped {
        file: PathBuf,
        reason: String,
    },
    /// A file that is not well-formed or cannot be opened: the rest of it
    /// is not read.
    FileError {
        file: PathBuf,
        reason: String,
    },
}

struct OpenFile {
    path: PathBuf,
    reader: NsReader<BufReader<File>>,
    /// The host in force at each open PIE element (None outside a host).
    hosts: Vec<Option<String>>,
    /// The host that the including element set, for files whose root is
    /// a `<user/>` or a bare include list.
    inherited: Option<String>,
    /// Bytes of this file already counted in the progress.
    counted: u64,
}

/// Reads users from a set of files, one at a time.
pub struct PieReader {
    roots: Vec<PathBuf>,
    stack: Vec<OpenFile>,
    /// Canonical paths of the files open on the stack (include loops).
    open: HashSet<PathBuf>,
    max_user_bytes: u64,
    buf: Vec<u8>,
    /// Bytes read so far, over every file (for the progress bar).
    pub progress: Arc<AtomicU64>,
    /// Bytes of every root file and what they include, when known.
    pub total_bytes: u64,
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn ns_of(r: &ResolveResult) -> String {
    match r {
        ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
        _ => String::new(),
    }
}

fn attr(reader: &NsReader<BufReader<File>>, e: &BytesStart, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key.as_bytes())
        .and_then(|a| a.decode_and_unescape_value(reader.decoder()).ok())
        .map(|v| v.into_owned())
}

/// Every `*.xml` file named by `path`: the file itself, or the files of
/// a directory that no other file of it includes, sorted by name; and
/// the bytes of all the files to read (for the progress bar).
pub fn input_files(path: &Path) -> Result<(Vec<PathBuf>, u64), String> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    if !path.is_dir() {
        let base = path.parent().unwrap_or(Path::new("."));
        let total = size(path)
            + includes(path)
                .iter()
                .map(|h| size(&base.join(h)))
                .sum::<u64>();
        return Ok((vec![path.to_path_buf()], total));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    let mut included = HashSet::new();
    for f in &files {
        for href in includes(f) {
            if let Ok(c) = f
                .parent()
                .unwrap_or(Path::new("."))
                .join(href)
                .canonicalize()
            {
                included.insert(c);
            }
        }
    }
    let total = files.iter().map(|f| size(f)).sum();
    let roots = files
        .into_iter()
        .filter(|f| f.canonicalize().map_or(true, |c| !included.contains(&c)))
        .collect();
    Ok((roots, total))
}

/// The include targets of a file. `<user/>` subtrees are passed over
/// without building anything, but the whole file is read: an include may
/// follow users.
fn includes(path: &Path) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut reader = NsReader::from_reader(BufReader::new(file));
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        buf.clear();
        let (ns, event) = match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, event)) => (ns_of(&ns), event),
            Err(_) => return out,
        };
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let name = local(e.local_name().as_ref());
                if name == "include" && ns == NS_XINCLUDE {
                    if let Some(h) = attr(&reader, &e, "href") {
                        out.push(h);
                    }
                } else if is_pie(&name, &ns, "user") {
                    let end = e.to_end().into_owned();
                    if reader
                        .read_to_end_into(end.name(), &mut Vec::new())
                        .is_err()
                    {
                        return out;
                    }
                }
            }
            Event::Eof => return out,
            _ => {}
        }
    }
}

impl PieReader {
    /// A reader of `roots` (see [`input_files`]), refusing users larger
    /// than `max_user_bytes` of XML.
    pub fn new(roots: Vec<PathBuf>, total_bytes: u64, max_user_bytes: u64) -> PieReader {
        let mut roots = roots;
        roots.reverse();
        PieReader {
            roots,
            stack: Vec::new(),
            open: HashSet::new(),
            max_user_bytes,
            buf: Vec::new(),
            progress: Arc::new(AtomicU64::new(0)),
            total_bytes,
        }
    }

    fn push_file(&mut self, path: PathBuf, inherited: Option<String>) -> Result<(), String> {
        let canonical = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if self.open.contains(&canonical) {
            return Err(format!("{} includes itself", path.display()));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(format!("{}: includes nested too deep", path.display()));
        }
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = NsReader::from_reader(BufReader::new(file));
        reader.config_mut().expand_empty_elements = false;
        self.open.insert(canonical);
        self.stack.push(OpenFile {
            path,
            reader,
            hosts: Vec::new(),
            inherited,
            counted: 0,
        });
        Ok(())
    }

    fn pop_file(&mut self) {
        if let Some(f) = self.stack.pop() {
            let total = f.reader.buffer_position();
            self.progress
                .fetch_add(total.saturating_sub(f.counted), Ordering::Relaxed);
            if let Ok(c) = f.path.canonicalize() {
                self.open.remove(&c);
            }
        }
    }

    fn count_progress(&mut self) {
        if let Some(f) = self.stack.last_mut() {
            let now = f.reader.buffer_position();
            self.progress
                .fetch_add(now.saturating_sub(f.counted), Ordering::Relaxed);
            f.counted = now;
        }
    }

    /// The next user, a skipped one, a file error, or None at the end.
    /// Reads files synchronously: it is meant for the command line.
    pub fn next_user(&mut self) -> Option<ReadItem> {
        loop {
            if self.stack.is_empty() {
                let root = self.roots.pop()?;
                if let Err(reason) = self.push_file(root.clone(), None) {
                    return Some(ReadItem::FileError { file: root, reason });
                }
            }
            match self.step() {
                Ok(Some(item)) => {
                    self.count_progress();
                    return Some(item);
                }
                Ok(None) => {}
                Err(reason) => {
                    let file = self
                        .stack
                        .last()
                        .map(|f| f.path.clone())
                        .unwrap_or_default();
                    self.pop_file();
                    return Some(ReadItem::FileError { file, reason });
                }
            }
        }
    }

    /// Reads one event of the innermost file; Some when it completes an item.
    fn step(&mut self) -> Result<Option<ReadItem>, String> {
        let f = self.stack.last_mut().expect("a file is open");
        self.buf.clear();
        let at = f.reader.buffer_position();
        let (ns, event) = match f.reader.read_resolved_event_into(&mut self.buf) {
            Ok((ns, event)) => (ns_of(&ns), event),
            Err(e) => return Err(format!("not well-formed XML after byte {at}: {e}")),
        };
        let empty = matches!(event, Event::Empty(_));
        match event {
            Event::Eof => {
                if !f.hosts.is_empty() {
                    return Err("the file ends inside an element".into());
                }
                self.pop_file();
                Ok(None)
            }
            Event::DocType(_) => Err("a DOCTYPE is not allowed".into()),
            Event::Start(e) | Event::Empty(e) => {
                let name = local(e.local_name().as_ref());
                let current = f
                    .hosts
                    .last()
                    .cloned()
                    .unwrap_or_else(|| f.inherited.clone());
                if name == "include" && ns == NS_XINCLUDE {
                    let href = attr(&f.reader, &e, "href").ok_or("xi:include without href")?;
                    let path = f.path.parent().unwrap_or(Path::new(".")).join(&href);
                    if !empty {
                        f.reader
                            .read_to_end_into(e.name(), &mut Vec::new())
                            .map_err(|e| e.to_string())?;
                    }
                    self.count_progress();
                    return match self.push_file(path.clone(), current) {
                        Ok(()) => Ok(None),
                        Err(reason) => Ok(Some(ReadItem::FileError { file: path, reason })),
                    };
                }
                if is_pie(&name, &ns, "user") {
                    let file = f.path.clone();
                    let Some(host) = current else {
                        skip(f, &e, empty)?;
                        return Ok(Some(ReadItem::Skipped {
                            file,
                            reason: "a <user/> outside any <host/>".into(),
                        }));
                    };
                    let start = f.reader.buffer_position();
                    let mut root = element_from(&f.reader, &e, &ns);
                    if !empty {
                        let max = self.max_user_bytes;
                        match read_children(&mut f.reader, &mut root, start, max)? {
                            true => {}
                            false => {
                                let name = root.attr("name").unwrap_or("?").to_string();
                                return Ok(Some(ReadItem::Skipped {
                                    file,
                                    reason: format!(
                                        "user '{name}@{host}' is larger than import_max_user_bytes ({max})"
                                    ),
                                }));
                            }
                        }
                    }
                    return Ok(Some(ReadItem::User(UserElement {
                        host,
                        element: root,
                        file,
                    })));
                }
                if is_pie(&name, &ns, "host") {
                    let jid = attr(&f.reader, &e, "jid");
                    if !empty {
                        f.hosts.push(jid.or(current));
                    }
                    return Ok(None);
                }
                if is_pie(&name, &ns, "server-data") {
                    if !empty {
                        f.hosts.push(current);
                    }
                    return Ok(None);
                }
                // Anything else at the top (MUC data of other exporters,
                // unknown extensions) is passed over.
                skip(f, &e, empty)?;
                Ok(None)
            }
            Event::End(_) => {
                f.hosts.pop();
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

fn skip(f: &mut OpenFile, e: &BytesStart, empty: bool) -> Result<(), String> {
    if !empty {
        f.reader
            .read_to_end_into(e.name(), &mut Vec::new())
            .map_err(|e| format!("not well-formed XML: {e}"))?;
    }
    Ok(())
}

/// An element from a start tag: namespace declarations are not attributes
/// (the tree carries resolved namespaces), except where a prefixed
/// attribute other than `xml:` needs its prefix declared.
fn element_from(reader: &NsReader<BufReader<File>>, e: &BytesStart, ns: &str) -> Element {
    let mut el = Element::new(local(e.local_name().as_ref()), ns);
    let attrs: Vec<(String, String)> = e
        .attributes()
        .flatten()
        .filter_map(|a| {
            let v = a.decode_and_unescape_value(reader.decoder()).ok()?;
            Some((local(a.key.as_ref()), v.into_owned()))
        })
        .collect();
    let prefixes: Vec<&str> = attrs
        .iter()
        .filter_map(|(k, _)| k.split_once(':').map(|(p, _)| p))
        .filter(|p| *p != "xmlns" && *p != "xml")
        .collect();
    for (k, v) in &attrs {
        if k == "xmlns" {
            continue;
        }
        if let Some(p) = k.strip_prefix("xmlns:") {
            if !prefixes.contains(&p) {
                continue;
            }
        }
        el.set_attr(k.as_str(), v.as_str());
    }
    el
}

/// Reads the children of `root` up to its end tag. False (and the rest
/// of the element skipped) when it grows past `max` bytes from `start`.
fn read_children(
    reader: &mut NsReader<BufReader<File>>,
    root: &mut Element,
    start: u64,
    max: u64,
) -> Result<bool, String> {
    let mut stack: Vec<Element> = Vec::new();
    let mut buf = Vec::new();
    let mut too_big = false;
    // Depth of the root's subtree while skipping a too-large user.
    let mut depth = 0usize;
    loop {
        buf.clear();
        let at = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, event)) => (ns_of(&ns), event),
            Err(e) => return Err(format!("not well-formed XML after byte {at}: {e}")),
        };
        if !too_big && reader.buffer_position().saturating_sub(start) > max {
            too_big = true;
            stack.clear();
            root.nodes_mut().clear();
        }
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth > MAX_USER_DEPTH {
                    return Err("elements nested too deep".into());
                }
                if !too_big {
                    stack.push(element_from(reader, &e, &ns));
                }
            }
            Event::Empty(e) if !too_big => {
                let child = element_from(reader, &e, &ns);
                match stack.last_mut() {
                    Some(parent) => parent.append_child(child),
                    None => root.append_child(child),
                }
            }
            Event::End(_) => {
                if depth == 0 {
                    return Ok(!too_big);
                }
                depth -= 1;
                if !too_big {
                    let done = stack.pop().expect("balanced by the reader");
                    match stack.last_mut() {
                        Some(parent) => parent.append_child(done),
                        None => root.append_child(done),
                    }
                }
            }
            Event::Text(t) if !too_big => {
                let text = t.unescape().map_err(|e| format!("bad text: {e}"))?;
                append_text(stack.last_mut().unwrap_or(root), &text);
            }
            Event::CData(c) if !too_big => {
                let text = String::from_utf8(c.into_inner().into_owned())
                    .map_err(|_| "CDATA that is not UTF-8".to_string())?;
                append_text(stack.last_mut().unwrap_or(root), &text);
            }
            Event::Eof => return Err("the file ends inside a <user/>".into()),
            Event::DocType(_) => return Err("a DOCTYPE is not allowed".into()),
            _ => {}
        }
    }
}

/// Appends text, merging with a preceding text node.
fn append_text(el: &mut Element, text: &str) {
    if let Some(Node::Text(t)) = el.nodes_mut().last_mut() {
        t.push_str(text);
        return;
    }
    el.append_text(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(path: &Path, max: u64) -> Vec<ReadItem> {
        let (roots, total) = input_files(path).unwrap();
        let mut r = PieReader::new(roots, total, max);
        std::iter::from_fn(|| r.next_user()).collect()
    }

    #[test]
    fn includes_hosts_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("main.xml"),
            "<?xml version='1.0'?><server-data xmlns='urn:xmpp:pie:0' \
             xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='h.xml'/></server-data>",
        )
        .unwrap();
        std::fs::write(
            d.join("h.xml"),
            "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='a.test'>\
             <user name='x'><vCard xmlns='vcard-temp'><FN>X &amp; Y</FN></vCard></user>\
             <xi:include href='u.xml'/></host>",
        )
        .unwrap();
        std::fs::write(
            d.join("u.xml"),
            "<user xmlns='urn:xmpp:pie:0' name='y' password='p'/>",
        )
        .unwrap();
        std::fs::write(
            d.join("z.xml"),
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='b.test'><user name='z'>\
             <query xmlns='jabber:iq:roster'><item jid='x@a.test'/></query></user></host></server-data>",
        )
        .unwrap();
        let got = users(d, 1 << 20);
        let names: Vec<String> = got
            .iter()
            .map(|i| match i {
                ReadItem::User(u) => format!("{}@{}", u.element.attr("name").unwrap(), u.host),
                other => panic!("{other:?}"),
            })
            .collect();
        // h.xml and u.xml are included by main.xml: read once, through it.
        assert_eq!(names, vec!["x@a.test", "y@a.test", "z@b.test"]);
        let ReadItem::User(x) = &got[0] else { panic!() };
        let fn_ = x
            .element
            .children()
            .next()
            .unwrap()
            .children()
            .next()
            .unwrap();
        assert_eq!(fn_.text(), "X & Y");
        assert_eq!(fn_.ns(), "vcard-temp");
    }

    #[test]
    fn big_users_are_skipped_and_broken_files_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let big = "<x xmlns='urn:x'>padding</x>".repeat(1000);
        std::fs::write(
            d.join("a.xml"),
            format!(
                "<server-data xmlns='urn:xmpp:pie:0'><host jid='a.test'>\
                 <user name='big'><query xmlns='jabber:iq:private'>{big}</query></user>\
                 <user name='small'/></host></server-data>"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("b.xml"),
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='a.test'><user name='ok'/>\
             <user name='broken'><a></b></user></host></server-data>",
        )
        .unwrap();
        let got = users(d, 4096);
        assert!(
            matches!(&got[0], ReadItem::Skipped { reason, .. } if reason.contains("big@a.test"))
        );
        assert!(matches!(&got[1], ReadItem::User(u) if u.element.attr("name") == Some("small")));
        assert!(matches!(&got[2], ReadItem::User(u) if u.element.attr("name") == Some("ok")));
        assert!(matches!(&got[3], ReadItem::FileError { .. }));
        assert_eq!(got.len(), 4);
    }
}
