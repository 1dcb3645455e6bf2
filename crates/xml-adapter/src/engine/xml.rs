//! quick-xml's events fed to a [`Run`]: start tags (their namespaces and checked
//! attributes), text, character and entity references, end tags, the declaration.

use std::collections::HashSet;

use quick_xml::events::{BytesDecl, BytesRef, BytesStart, Event};
use quick_xml::name::{NamespaceResolver, QName, ResolveResult};

use super::input::{Format, StartTag};
use super::report::{DocumentError, malformed};
use super::run::Run;
use crate::path::NameTest;

/// The XML input format.
#[derive(Debug)]
pub(super) struct Xml;

impl Format for Xml {
    const NAME: &'static str = "XML";
    const PREFIXED_NAMES: bool = true;

    fn kept_attribute(
        &self,
        source: &str,
        name_len: usize,
        test: &NameTest,
        out: &mut String,
    ) -> bool {
        let start = BytesStart::from_content(source, name_len);
        let found = start.attributes().flatten().find_map(|a| {
            test.matches(None, a.key.local_name().as_ref())
                .then(|| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
                .flatten()
        });
        match found {
            Some(v) => {
                out.push_str(&v);
                true
            }
            None => false,
        }
    }
}

/// One event, with the namespace scopes kept as quick-xml's `NsReader` keeps them: a start
/// tag's bindings are in scope for it and its content, an end tag's until it is handled.
pub(super) fn event_with(
    run: &mut Run<'_, Xml>,
    ns: Option<&mut NamespaceResolver>,
    ev: Event<'_>,
    at: u64,
) -> Result<(), DocumentError> {
    let Some(ns) = ns else {
        return event(run, &NoNamespaces, ev, at);
    };
    let scope = |r: Result<(), quick_xml::name::NamespaceError>| {
        r.map_err(|e| malformed(at, format!("namespace declaration: {e}")))
    };
    match ev {
        Event::Start(e) => {
            scope(ns.push(&e))?;
            event(run, ns, Event::Start(e), at)
        }
        Event::Empty(e) => {
            scope(ns.push(&e))?;
            let r = event(run, ns, Event::Empty(e), at);
            ns.pop();
            r
        }
        Event::End(e) => {
            let r = event(run, ns, Event::End(e), at);
            ns.pop();
            r
        }
        ev => event(run, ns, ev, at),
    }
}

/// One event (anything but `Eof`), at byte `pos` of the document.
fn event<N: Names>(
    run: &mut Run<'_, Xml>,
    names: &N,
    ev: Event<'_>,
    pos: u64,
) -> Result<(), DocumentError> {
    match ev {
        Event::Start(e) => run.start(&Tag { e: &e, names, pos }, pos)?,
        Event::Empty(e) => {
            run.start(&Tag { e: &e, names, pos }, pos)?;
            run.end(e.name().0, pos)?;
        }
        Event::End(e) => run.end(e.name().0, pos)?,
        // Text nobody reads is not copied or normalised; outside the root it must be
        // whitespace (line ends do not matter for that).
        Event::Text(t) => {
            if !run.needs_text() {
                run.skip_text(t.len());
            } else {
                // Short texts without `\r` need no line-end normalisation; a byte loop
                // decides that faster than a library call.
                let raw: &str = &t;
                if raw.len() <= 64 && !raw.bytes().any(|b| b == b'\r') {
                    run.text(raw, pos)?;
                } else {
                    run.text(&t.xml10_content(), pos)?;
                }
            }
        }
        Event::CData(t) => {
            if !run.needs_text() {
                run.skip_text(t.len());
            } else {
                run.text(&t.xml10_content(), pos)?;
            }
        }
        Event::GeneralRef(r) => reference(run, &r, pos)?,
        Event::Decl(d) => declaration(run, &d, pos)?,
        Event::DocType(_) | Event::Comment(_) | Event::PI(_) => {}
        Event::Eof => {}
    }
    Ok(())
}

/// A character or entity reference: text, checked even where nobody reads it (an undefined
/// entity is an error). Out of line: rare next to tags and text.
#[inline(never)]
fn reference(run: &mut Run<'_, Xml>, r: &BytesRef<'_>, pos: u64) -> Result<(), DocumentError> {
    let mut utf8 = [0u8; 4];
    let text: &str = match r.resolve_char_ref() {
        Ok(Some(c)) => c.encode_utf8(&mut utf8),
        Ok(None) => match predefined_entity(r) {
            Some(s) => s,
            None => {
                return Err(malformed(
                    pos,
                    format!(
                        "undefined entity `&{};` (entities from a DTD are never expanded)",
                        &**r
                    ),
                ));
            }
        },
        Err(e) => return Err(malformed(pos, e.to_string())),
    };
    run.text(text, pos)
}

/// The XML declaration. Documented leniency: passenger-status prints a second declaration, and
/// some servers print a comment first. Only the encoding matters here.
#[inline(never)]
fn declaration(run: &Run<'_, Xml>, d: &BytesDecl<'_>, pos: u64) -> Result<(), DocumentError> {
    if let Some(Ok(enc)) = d.encoding() {
        let e = enc.to_ascii_lowercase().replace('_', "-");
        let ok = matches!(
            e.as_str(),
            "utf-8"
                | "utf8"
                | "us-ascii"
                | "ascii"
                | "iso-8859-1"
                | "iso8859-1"
                | "latin1"
                | "latin-1"
        );
        if !ok {
            return Err(malformed(
                pos,
                format!("unsupported encoding `{enc}` (UTF-8 and ASCII-compatible text only)"),
            ));
        }
    }
    if run.root_seen() {
        return Err(malformed(pos, "XML declaration after the root element"));
    }
    Ok(())
}

/// A start tag, with the namespace bindings in scope for it.
struct Tag<'a, 'b, N> {
    e: &'a BytesStart<'b>,
    names: &'a N,
    /// Where the tag starts in the document (for errors).
    pos: u64,
}

impl<N: Names> StartTag for Tag<'_, '_, N> {
    fn name(&self) -> &str {
        self.e.name().0
    }

    fn namespace(&self) -> Option<String> {
        self.names.element_uri(self.e.name())
    }

    fn size(&self) -> usize {
        self.e.len()
    }

    fn source(&self) -> &str {
        self.e
    }

    fn attributes(
        &self,
        mut each: impl FnMut(Option<&str>, &str, &str),
    ) -> Result<(), DocumentError> {
        let (e, pos) = (self.e, self.pos);
        if e.attributes_raw().trim_ascii().is_empty() {
            return Ok(());
        }
        let qname = e.name();
        // Repeated names are checked here: quick-xml's own check allocates for every tag.
        let mut keys: [&str; 16] = [""; 16];
        let mut n = 0usize;
        let mut many: Option<HashSet<&str>> = None;
        for a in e.attributes().with_checks(false) {
            let a =
                a.map_err(|err| malformed(pos, format!("bad attribute in <{}>: {err}", qname.0)))?;
            let key = a.key.0;
            let repeated = match &mut many {
                Some(set) => !set.insert(key),
                None if n < keys.len() => {
                    let r = keys[..n].contains(&key);
                    keys[n] = key;
                    n += 1;
                    r
                }
                None => {
                    let mut set: HashSet<&str> = keys.iter().copied().collect();
                    let r = !set.insert(key);
                    many = Some(set);
                    r
                }
            };
            if repeated {
                return Err(malformed(
                    pos,
                    format!("bad attribute in <{}>: `{key}` appears twice", qname.0),
                ));
            }
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| {
                    malformed(pos, format!("attribute value in <{}>: {err}", qname.0))
                })?;
            let (uri, local) = self.names.attribute(a.key);
            each(uri.as_deref(), local, &v);
        }
        Ok(())
    }
}

/// Namespace resolution for the current event: none unless the mapping uses namespaces (the
/// namespace-aware reader inspects every start tag's attributes, which costs throughput for
/// nothing).
trait Names {
    fn element_uri(&self, q: QName<'_>) -> Option<String>;
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str);
}

struct NoNamespaces;

impl Names for NoNamespaces {
    fn element_uri(&self, _: QName<'_>) -> Option<String> {
        None
    }
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str) {
        (None, q.local_name().into_inner())
    }
}

impl Names for NamespaceResolver {
    fn element_uri(&self, q: QName<'_>) -> Option<String> {
        resolve_uri(self.resolve_element(q).0)
    }
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str) {
        let (res, local) = self.resolve_attribute(q);
        (resolve_uri(res), local.into_inner())
    }
}

fn resolve_uri(r: ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.0.to_string()),
        _ => None,
    }
}

/// The five entities XML predefines; anything else would need a DTD, which is never read.
fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        _ => return None,
    })
}
