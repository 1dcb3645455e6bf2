//! A document translated as its bytes arrive, in the format the mapping names, or that the
//! response's `Content-Type` or the document's first byte says.

use std::io::BufRead;

use super::json::JsonTranslator;
use super::plan::Engine;
use super::report::{DocumentError, Translation, malformed, malformed_json};
use super::run::Scratch;
use super::window::{WINDOW, XmlTranslator};
use crate::mapping::InputFormat;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl Engine {
    /// Reads a whole document and translates it. Any error refuses the whole document.
    pub fn translate<R: BufRead>(&self, mut input: R) -> Result<Translation, DocumentError> {
        let mut t = Translator::new(self);
        loop {
            let chunk = match input.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DocumentError::Read {
                        position: t.position(),
                        source,
                    });
                }
            };
            let n = chunk.len();
            t.feed(chunk)?;
            input.consume(n);
        }
        t.finish()
    }
}

/// The document format a `Content-Type` names, if it names one.
pub fn format_of_content_type(content_type: &str) -> Option<InputFormat> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" || media == "text/json" || media.ends_with("+json") {
        Some(InputFormat::Json)
    } else if media.ends_with("/xml") || media.ends_with("+xml") {
        Some(InputFormat::Xml)
    } else {
        None
    }
}

/// A document translated as its bytes arrive ([`Translator::feed`]), so a fetch translates
/// the body chunk by chunk where it receives it. Memory does not follow the document: each
/// format keeps only the bytes of a token (or XML event) cut by a chunk's end.
#[derive(Debug)]
pub struct Translator<'e> {
    inner: Inner<'e>,
}

#[derive(Debug)]
enum Inner<'e> {
    /// The document's first bytes wait here until its encoding is checked (a UTF-16 or
    /// UTF-32 document is refused naming its encoding) and, when the format is not known
    /// (`format`), until the first byte that is not white space says it.
    Sniffing {
        engine: &'e Engine,
        scratch: Scratch,
        head: Vec<u8>,
        min_window: usize,
        format: Option<InputFormat>,
    },
    Xml(XmlTranslator<'e>),
    Json(JsonTranslator<'e>),
    /// Only while the format is being decided.
    Gone,
}

impl<'e> Translator<'e> {
    pub fn new(engine: &'e Engine) -> Translator<'e> {
        Translator::with_scratch(engine, Scratch::default())
    }

    /// A translator on the buffers an earlier one left ([`Translator::finish_keep`]), for a
    /// document whose format the mapping names or its first byte says.
    pub fn with_scratch(engine: &'e Engine, scratch: Scratch) -> Translator<'e> {
        Translator::for_content_type(engine, scratch, None)
    }

    /// [`Translator::with_scratch`] for a response with this `Content-Type`, which decides
    /// the format when the mapping's `format` is `auto`.
    pub fn for_content_type(
        engine: &'e Engine,
        scratch: Scratch,
        content_type: Option<&str>,
    ) -> Translator<'e> {
        let format = match engine.mapping.format {
            InputFormat::Auto => content_type.and_then(format_of_content_type),
            f => Some(f),
        };
        Translator::start(engine, scratch, format, WINDOW)
    }

    #[cfg(test)]
    pub(super) fn with_window(
        engine: &'e Engine,
        scratch: Scratch,
        min_window: usize,
    ) -> Translator<'e> {
        let format = match engine.mapping.format {
            InputFormat::Auto => None,
            f => Some(f),
        };
        Translator::start(engine, scratch, format, min_window)
    }

    fn start(
        engine: &'e Engine,
        scratch: Scratch,
        format: Option<InputFormat>,
        min_window: usize,
    ) -> Translator<'e> {
        Translator {
            inner: Inner::Sniffing {
                engine,
                scratch,
                head: Vec::new(),
                min_window,
                format: format.filter(|f| *f != InputFormat::Auto),
            },
        }
    }

    /// The format's translator, on the buffers of `scratch`.
    fn started(
        engine: &'e Engine,
        scratch: Scratch,
        format: InputFormat,
        min_window: usize,
    ) -> Inner<'e> {
        match format {
            InputFormat::Json => Inner::Json(JsonTranslator::new(engine, scratch)),
            InputFormat::Xml | InputFormat::Auto => {
                Inner::Xml(XmlTranslator::with_window(engine, scratch, min_window))
            }
        }
    }

    /// Bytes received so far.
    pub fn position(&self) -> u64 {
        match &self.inner {
            Inner::Sniffing { head, .. } => head.len() as u64,
            Inner::Xml(t) => t.position(),
            Inner::Json(t) => t.position(),
            Inner::Gone => 0,
        }
    }

    /// The next bytes of the document. An error refuses the document: feed no more.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DocumentError> {
        match &mut self.inner {
            Inner::Xml(t) => t.feed(bytes),
            Inner::Json(t) => t.feed(bytes),
            Inner::Sniffing { head, format, .. } => {
                head.extend_from_slice(bytes);
                if head.len() < ENCODING_HEAD {
                    return Ok(());
                }
                check_encoding(head, *format)?;
                match format.or_else(|| sniff(head)) {
                    Some(format) => self.decide(format),
                    None => Ok(()),
                }
            }
            Inner::Gone => Ok(()),
        }
    }

    /// Starts the format's translator on the bytes received so far.
    fn decide(&mut self, format: InputFormat) -> Result<(), DocumentError> {
        let Inner::Sniffing {
            engine,
            scratch,
            head,
            min_window,
            ..
        } = std::mem::replace(&mut self.inner, Inner::Gone)
        else {
            return Ok(());
        };
        self.inner = Translator::started(engine, scratch, format, min_window);
        self.feed(&head)
    }

    /// The document has ended: the rest is parsed and the translation made.
    pub fn finish(self) -> Result<Translation, DocumentError> {
        self.finish_keep().0
    }

    /// [`Translator::finish`], and the buffers for the next document.
    pub fn finish_keep(mut self) -> (Result<Translation, DocumentError>, Scratch) {
        if let Inner::Sniffing { head, format, .. } = &self.inner {
            // A short document; or nothing but white space, which the XML reader refuses.
            let format = *format;
            let decided = check_encoding(head, format)
                .map(|()| format.or_else(|| sniff(head)).unwrap_or(InputFormat::Xml))
                .and_then(|f| self.decide(f));
            if let Err(e) = decided {
                return (Err(e), self.into_scratch());
            }
        }
        match self.inner {
            Inner::Xml(t) => t.finish_keep(),
            Inner::Json(t) => t.finish_keep(),
            Inner::Sniffing { .. } | Inner::Gone => (
                Err(DocumentError::Read {
                    position: 0,
                    source: std::io::Error::other("the translator was abandoned"),
                }),
                Scratch::default(),
            ),
        }
    }

    /// The buffers for the next document, when this one is abandoned.
    pub fn into_scratch(self) -> Scratch {
        match self.inner {
            Inner::Sniffing { scratch, .. } => scratch,
            Inner::Xml(t) => t.into_scratch(),
            Inner::Json(t) => t.into_scratch(),
            Inner::Gone => Scratch::default(),
        }
    }
}

/// How many bytes of the document's start [`check_encoding`] looks at.
const ENCODING_HEAD: usize = 4;

/// Refuses a document in UTF-16 or UTF-32, naming the encoding: by its byte order mark, or by
/// the zero bytes around its first ASCII character (`<`, `{`, `[`, white space).
fn check_encoding(head: &[u8], format: Option<InputFormat>) -> Result<(), DocumentError> {
    let encoding = match head {
        [0, 0, 0xFE, 0xFF, ..] => "UTF-32BE",
        [0xFF, 0xFE, 0, 0, ..] => "UTF-32LE",
        [0xFE, 0xFF, ..] => "UTF-16BE",
        [0xFF, 0xFE, ..] => "UTF-16LE",
        [0, 0, 0, a, ..] if a.is_ascii() => "UTF-32BE",
        [a, 0, 0, 0, ..] if a.is_ascii() && *a != 0 => "UTF-32LE",
        [0, a, ..] if a.is_ascii() && *a != 0 => "UTF-16BE",
        [a, 0, ..] if a.is_ascii() && *a != 0 => "UTF-16LE",
        _ => return Ok(()),
    };
    let message = format!(
        "the document is encoded in {encoding}; only UTF-8 and ASCII-compatible documents are \
         read (convert it, e.g. with iconv, or serve it as UTF-8)"
    );
    Err(match format {
        Some(InputFormat::Json) => malformed_json(0, message),
        _ => malformed(0, message),
    })
}

/// The format the document's first byte other than a byte order mark and white space says:
/// `{` or `[` is JSON, anything else XML. `None` until such a byte has arrived.
fn sniff(head: &[u8]) -> Option<InputFormat> {
    let body = head.strip_prefix(UTF8_BOM).unwrap_or(head);
    if body.len() < UTF8_BOM.len() && UTF8_BOM.starts_with(body) && !body.is_empty() {
        // A byte order mark cut by the chunk's end.
        return None;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    Some(if matches!(first, b'{' | b'[') {
        InputFormat::Json
    } else {
        InputFormat::Xml
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_formats() {
        for (ct, f) in [
            ("application/json", Some(InputFormat::Json)),
            ("application/json; charset=utf-8", Some(InputFormat::Json)),
            ("Application/Problem+JSON", Some(InputFormat::Json)),
            ("text/xml", Some(InputFormat::Xml)),
            ("application/xml;charset=UTF-8", Some(InputFormat::Xml)),
            ("application/atom+xml", Some(InputFormat::Xml)),
            ("text/plain", None),
            ("", None),
        ] {
            assert_eq!(format_of_content_type(ct), f, "{ct}");
        }
    }

    #[test]
    fn utf16_and_utf32_are_refused_naming_the_encoding() {
        let engine = Engine::new(
            crate::mapping::Mapping::parse(
                "rules:\n  - {name: a, type: gauge, path: /a}\n",
                "test.yaml",
            )
            .expect("mapping"),
        );
        let utf16le: Vec<u8> = "\u{FEFF}<a>1</a>"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let utf16be: Vec<u8> = "<a>1</a>"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let json16: Vec<u8> = "{\"a\": 1}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for (doc, want) in [
            (&utf16le[..], "UTF-16LE"),
            (&utf16be[..], "UTF-16BE"),
            (&json16[..], "UTF-16LE"),
            (b"\xFE\xFF\x00<", "UTF-16BE"),
            (b"\xFF\xFE\x00\x00<\x00\x00\x00", "UTF-32LE"),
            (b"\x00\x00\x00<", "UTF-32BE"),
            (b"\xFF\xFE", "UTF-16LE"),
        ] {
            let e = engine.translate(doc).expect_err("refused").to_string();
            assert!(e.contains(want) && e.contains("at byte 0"), "{want}: {e}");
            // Fed a byte at a time, the encoding is named all the same.
            let mut t = Translator::new(&engine);
            let e = doc
                .iter()
                .try_for_each(|b| t.feed(std::slice::from_ref(b)))
                .err()
                .or_else(|| t.finish().err())
                .expect("refused")
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert_eq!(engine.translate(&b"<a>1</a>"[..]).expect("UTF-8").series, 1);
    }

    #[test]
    fn the_first_byte_says_the_format() {
        assert_eq!(sniff(b" \n\t{"), Some(InputFormat::Json));
        assert_eq!(sniff(b"\xEF\xBB\xBF["), Some(InputFormat::Json));
        assert_eq!(sniff(b"<?xml"), Some(InputFormat::Xml));
        assert_eq!(sniff(b"  "), None);
        assert_eq!(sniff(b"\xEF\xBB"), None);
        assert_eq!(sniff(b""), None);
    }
}
