//! Where in the mapping file a setting is: a semantic error (a bad path, a missing `+Inf`
//! bucket) names the file, line and column, and the field as the YAML parser's own errors do
//! (`rules[0].labels.view`, 0-based indexes), so that every mapping error reads the same.
//!
//! The locations come from serde-saphyr's [`Spanned`], read from the text again only when an
//! error is reported: loading a good mapping pays nothing for them.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use sidecar_kit::config::ConfigError;

/// One step of a field's path: a key of a mapping, or an index of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A setting of the mapping, as `rules[0].labels.view`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Field(Vec<Seg>);

impl Field {
    /// The top-level key `key`.
    pub(crate) fn top(key: &str) -> Field {
        Field(vec![Seg::Key(key.to_string())])
    }

    /// Rule `i` (0-based, as `rules[i]`).
    pub(crate) fn rule(i: usize) -> Field {
        Field(vec![Seg::Key("rules".into()), Seg::Index(i)])
    }

    /// This field's member `key`.
    pub(crate) fn key(&self, key: &str) -> Field {
        let mut f = self.clone();
        f.0.push(Seg::Key(key.to_string()));
        f
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A semantic error of the mapping: the field at fault and what is wrong with it.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) field: Field,
    pub(crate) message: String,
}

impl Fault {
    pub(crate) fn new(field: Field, message: impl Into<String>) -> Fault {
        Fault {
            field,
            message: message.into(),
        }
    }

    /// The error a user sees: `mapping FILE: line L column C: field `F`: MESSAGE`, the form
    /// of the parser's own errors. The line is the field's, or its nearest enclosing one's.
    pub(crate) fn into_config_error(self, origin: &str, text: &str) -> ConfigError {
        let location = locate(text, &self.field)
            .map(|(line, column)| format!("line {line} column {column}: "))
            .unwrap_or_default();
        ConfigError::Invalid {
            origin: format!("mapping {origin}"),
            location,
            field: format!("field `{}`: ", self.field),
            message: self.message,
        }
    }
}

/// The line and column (1-based) where `field`, or the nearest enclosing field found, is
/// written.
fn locate(text: &str, field: &Field) -> Option<(u64, u64)> {
    let root: Spanned<Tree> = serde_saphyr::from_str(text).ok()?;
    let mut at = &root;
    let mut best = None;
    let mut known = |s: &Spanned<Tree>| {
        let l = &s.referenced;
        if l.line() > 0 {
            best = Some((l.line(), l.column()));
        }
    };
    known(at);
    for seg in &field.0 {
        let next = match (&at.value, seg) {
            (Tree::Map(entries), Seg::Key(k)) => {
                entries.iter().find(|(key, _)| key == k).map(|(_, v)| v)
            }
            (Tree::Seq(items), Seg::Index(i)) => items.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        known(next);
        at = next;
    }
    best
}

/// The shape of a YAML document, each node with where it is written.
#[derive(Debug)]
enum Tree {
    Map(Vec<(String, Spanned<Tree>)>),
    Seq(Vec<Spanned<Tree>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Spanned<Tree>>()? {
            items.push(v);
        }
        Ok(Tree::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Key>()? {
            entries.push((k.0, map.next_value::<Spanned<Tree>>()?));
        }
        Ok(Tree::Map(entries))
    }
}

/// A mapping's key as text (a key that is no scalar is kept as an empty string).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Key(String::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Key(String::new()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_where_they_are_written() {
        let text = "up_metric: x\nrules:\n  - name: a\n    path: /a\n    labels:\n      view: '@v'\n  - {name: b, path: /b}\n";
        let at = |f: Field| locate(text, &f);
        assert_eq!(at(Field::top("up_metric")), Some((1, 12)));
        assert_eq!(at(Field::rule(0).key("path")), Some((4, 11)));
        assert_eq!(at(Field::rule(0).key("labels").key("view")), Some((6, 13)));
        assert_eq!(at(Field::rule(1).key("path")), Some((7, 21)));
        // A field not written falls back to the nearest one that is (here the rule).
        assert_eq!(at(Field::rule(1).key("buckets")), Some((7, 5)));
        assert_eq!(
            Field::rule(3).key("labels").key("view").to_string(),
            "rules[3].labels.view"
        );
    }
}
