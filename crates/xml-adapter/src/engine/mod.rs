//! The streaming evaluator: one pass over the document, no DOM of it.
//!
//! The input format's front end (`window` and `xml` for XML, `json` for JSON; the
//! [`Translator`] picks one) turns the document into start tags, text and end tags for a run
//! (`run`), which is the same whatever the format:
//! - `plan`: the mapping compiled once ([`Engine`]): all rules' record paths merged into one
//!   trie of steps, and what their relative paths read;
//! - `stack`: the open elements, each with the trie states it matched;
//! - `capture`: when an element completes a record path, only that element's subtree is
//!   captured (a small arena, capped by `max_record_bytes`);
//! - `record`: when the record closes, the rule's relative paths are read from it (and from
//!   its open ancestors) and its samples made;
//! - `series`: the samples folded into series, then the families.
//!
//! The per-event and per-record work allocates nothing in the common case: names, attributes
//! and text live in buffers reused for the whole document (and for the next, see [`Scratch`]),
//! and values are read as slices of them.

mod capture;
mod defer;
mod input;
mod json;
#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod lang_tests;
mod open;
mod plan;
mod record;
mod report;
mod reuse;
mod run;
mod series;
mod stack;
#[cfg(test)]
mod tests;
mod translator;
mod window;
mod xml;

pub use plan::Engine;
pub use report::{DocumentError, Reason, Translation, failure_families};
pub use run::Scratch;
pub use translator::{Translator, format_of_content_type};
