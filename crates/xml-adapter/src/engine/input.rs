//! What an input format hands the format-independent stages ([`super::run::Run`]): each
//! element's start tag, then its text and its end, as the document streams past. The stages
//! match, capture, record and fold series the same whatever the format; only reading a start
//! tag, and an attribute from the tag an open ancestor kept, is the format's.

use super::report::DocumentError;
use crate::path::NameTest;

/// An element's start tag, for as long as its start is being handled.
pub(super) trait StartTag {
    /// The name as written (`prefix:local`).
    fn name(&self) -> &str;

    /// The namespace URI of the name; asked only when the mapping uses namespaces.
    fn namespace(&self) -> Option<String>;

    /// Bytes of the tag in the document: what it adds to its record's `max_record_bytes`.
    fn size(&self) -> usize;

    /// What an open element keeps of its tag, so that [`Format::kept_attribute`] can read an
    /// attribute of it for a record below (`ancestor::view/@name`). It starts with the name.
    fn source(&self) -> &str;

    /// Calls `each` with every attribute's namespace URI, local name and value, checked: an
    /// error refuses the document.
    fn attributes(&self, each: impl FnMut(Option<&str>, &str, &str)) -> Result<(), DocumentError>;
}

/// The input format of a run, as the stages that outlive a start tag need it.
pub(super) trait Format {
    /// The format's name in errors.
    const NAME: &'static str;

    /// Names may carry a prefix (`prefix:local`); a JSON key's `:` is part of the name.
    const PREFIXED_NAMES: bool;

    /// Appends to `out` the value of the first attribute that `test` matches in `source` (what
    /// [`StartTag::source`] kept; its name is `name_len` bytes). `false` when none matches.
    fn kept_attribute(
        &self,
        source: &str,
        name_len: usize,
        test: &NameTest,
        out: &mut String,
    ) -> bool;
}
