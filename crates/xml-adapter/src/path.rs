//! The path language: a streaming subset of XPath.
//!
//! Record paths (`/a/b[@x="1"]//c`) are matched while the document streams past; relative paths
//! (`@name`, `child/grandchild`, `ancestor::view/@name`, `../measTypes`) are evaluated when a record
//! closes, against the record's own small subtree and the stack of its open ancestors. The grammar
//! is parsed here; evaluation lives in [`crate::engine`].
//!
//! A JSON document is read as elements: an object's member is named by its key, an array's item
//! by its index, so `/servers/*[name="web1"]/requests`, `/qtypes/*` with `name()` as a label,
//! `//frontend` and `/items/0` read JSON with the same steps. A key that is no name is quoted:
//! `/"rx bytes"`.
//!
//! Beyond the paths: `position()` (an element's 1-based position among its parent's element
//! children, known when its start tag streams past), `[not(*)]` (a leaf: decided when the
//! record's first child element starts, or when it closes without one), and
//! `concat(path, "text", path, ...)` (one value joined from several paths and literals).

use std::collections::BTreeMap;

use regex::Regex;

/// A path that cannot be parsed or that the streaming evaluator cannot honour.
#[derive(Debug, thiserror::Error)]
#[error("path `{path}`: {message}")]
pub struct PathError {
    pub path: String,
    pub message: String,
}

/// An element or attribute name test.
#[derive(Debug, Clone, PartialEq)]
pub enum NameTest {
    /// `*`: any name.
    Any,
    /// `name`: matches the local name in any namespace (documented leniency: users need not
    /// care about default namespaces).
    Local(String),
    /// `p:name` or `p:*`: namespace URI bound to `p` in the mapping's `namespaces`, then the local
    /// name (`None` for `p:*`).
    Qualified { uri: String, local: Option<String> },
}

impl NameTest {
    /// Does an element/attribute with this namespace URI (if bound) and local name match?
    pub fn matches(&self, uri: Option<&str>, local: &str) -> bool {
        match self {
            NameTest::Any => true,
            NameTest::Local(l) => l == local,
            NameTest::Qualified { uri: u, local: l } => {
                uri == Some(u.as_str()) && l.as_deref().is_none_or(|l| l == local)
            }
        }
    }

    pub fn needs_namespaces(&self) -> bool {
        matches!(self, NameTest::Qualified { .. })
    }
}

/// What a predicate looks at.
#[derive(Debug, Clone)]
pub enum Operand {
    Attr(NameTest),
    /// Text of the first child element with this name (record step only).
    Child(NameTest),
    /// Text of the first element down these child steps (`field/name`; record step only).
    ChildPath(Vec<NameTest>),
    /// The element's own text (`.` or `text()`), record step only.
    Text,
    Name,
    LocalName,
    /// The element's 1-based position among its parent's element children.
    Position,
}

#[derive(Debug, Clone)]
pub enum Op {
    Exists,
    /// `not(operand)`: the operand selects nothing.
    Absent,
    Eq(String),
    Ne(String),
    StartsWith(String),
    Contains(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
pub struct Predicate {
    pub operand: Operand,
    pub op: Op,
}

impl Predicate {
    /// Needs the element's content, so can only be decided when the element closes.
    pub fn needs_content(&self) -> bool {
        matches!(
            self.operand,
            Operand::Child(_) | Operand::ChildPath(_) | Operand::Text
        )
    }

    pub fn needs_namespaces(&self) -> bool {
        match &self.operand {
            Operand::Attr(t) | Operand::Child(t) => t.needs_namespaces(),
            Operand::ChildPath(ts) => ts.iter().any(NameTest::needs_namespaces),
            Operand::Text | Operand::Name | Operand::LocalName | Operand::Position => false,
        }
    }

    /// `not(*)`: the element has no child element (a leaf).
    pub fn is_leaf_test(&self) -> bool {
        matches!(
            (&self.operand, &self.op),
            (Operand::Child(NameTest::Any), Op::Absent)
        )
    }

    pub fn test(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::Absent, v) => v.is_none(),
            // Absent is "not equal": users write `[@x!="a"]` to mean "anything but a".
            (Op::Ne(_), None) => true,
            (_, None) => false,
            (Op::Eq(s), Some(v)) => v == s,
            (Op::Ne(s), Some(v)) => v != s,
            (Op::StartsWith(s), Some(v)) => v.starts_with(s.as_str()),
            (Op::Contains(s), Some(v)) => v.contains(s.as_str()),
            (Op::Matches(r), Some(v)) => r.is_match(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Child,
    Descendant,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub axis: Axis,
    pub test: NameTest,
    pub predicates: Vec<Predicate>,
}

/// An absolute record path: `/statistics/server/counters[@type="qtype"]/counter`.
#[derive(Debug, Clone)]
pub struct RecordPath {
    pub steps: Vec<Step>,
}

/// Where a relative path starts when it climbs above the record.
#[derive(Debug, Clone)]
pub enum AncestorSel {
    /// `..` repeated n times (n >= 1).
    Up(usize),
    /// `ancestor::name`: the nearest open ancestor with that name.
    Named(NameTest),
}

/// The last piece of a relative path.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// The text of the element reached (all descendant text, concatenated).
    Text,
    Attr(NameTest),
    Name,
    LocalName,
    /// The element's 1-based position among its parent's element children.
    Position,
}

/// A piece of `concat(...)`.
#[derive(Debug, Clone)]
pub enum Part {
    Path(RelPath),
    Literal(String),
}

/// A relative path, evaluated from a record.
#[derive(Debug, Clone)]
pub enum RelPath {
    /// Inside the record: child steps (with any predicates), then a leaf.
    Down {
        steps: Vec<(NameTest, Vec<Predicate>)>,
        leaf: Leaf,
    },
    /// On an open ancestor: its attribute or name, or the text of one of its leaf children that
    /// closed before the record did (`child`).
    Up {
        sel: AncestorSel,
        child: Option<NameTest>,
        leaf: Leaf,
    },
    /// `concat(a, "-", b)`: the parts' values joined; it selects something when one of its
    /// paths does.
    Concat(Vec<Part>),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    namespaces: &'a BTreeMap<String, String>,
}

pub(crate) fn err(path: &str, message: impl Into<String>) -> PathError {
    PathError {
        path: path.to_string(),
        message: message.into(),
    }
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        // Whitespace may be more than one byte (U+00A0, U+2006).
        while let Some(c) = self.rest().chars().next().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }
    fn fail(&self, message: impl Into<String>) -> PathError {
        err(
            self.src,
            format!("{} (at offset {})", message.into(), self.pos),
        )
    }

    fn ident(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '*')))
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return None;
        }
        self.pos += len;
        Some(&rest[..len])
    }

    fn name_test(&mut self) -> Result<NameTest, PathError> {
        // A quoted name: a JSON key with characters a name cannot hold (`"a b"`, `'x/y'`).
        if self.rest().starts_with(['"', '\'']) {
            return Ok(NameTest::Local(self.string_lit()?));
        }
        let first = self.ident().ok_or_else(|| self.fail("expected a name"))?;
        if self.rest().starts_with(':') && !self.rest().starts_with("::") {
            self.pos += 1;
            let local = self
                .ident()
                .ok_or_else(|| self.fail("expected a local name after the prefix"))?;
            let uri = self.namespaces.get(first).ok_or_else(|| {
                self.fail(format!(
                    "prefix `{first}` is not declared in the mapping's `namespaces`"
                ))
            })?;
            return Ok(NameTest::Qualified {
                uri: uri.clone(),
                local: (local != "*").then(|| local.to_string()),
            });
        }
        if first == "*" {
            Ok(NameTest::Any)
        } else if first.contains('*') {
            Err(self.fail("`*` must stand alone"))
        } else {
            Ok(NameTest::Local(first.to_string()))
        }
    }

    fn string_lit(&mut self) -> Result<String, PathError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.fail("expected a quoted string")),
        };
        self.pos += 1;
        let rest = self.rest();
        let end = rest
            .find(quote)
            .ok_or_else(|| self.fail("unterminated string"))?;
        self.pos += end + 1;
        Ok(rest[..end].to_string())
    }

    fn operand(&mut self) -> Result<Operand, PathError> {
        self.skip_ws();
        if self.eat("@") {
            return Ok(Operand::Attr(self.name_test()?));
        }
        if self.eat("name()") {
            return Ok(Operand::Name);
        }
        if self.eat("local-name()") {
            return Ok(Operand::LocalName);
        }
        if self.eat("position()") {
            return Ok(Operand::Position);
        }
        if self.eat("text()") || self.eat(".") {
            return Ok(Operand::Text);
        }
        let first = self.name_test()?;
        if !self.rest().starts_with('/') {
            return Ok(Operand::Child(first));
        }
        let mut steps = vec![first];
        while self.eat("/") {
            steps.push(self.name_test()?);
        }
        Ok(Operand::ChildPath(steps))
    }

    /// A quoted string, or (for `position()`) a whole number.
    fn literal(&mut self) -> Result<String, PathError> {
        self.skip_ws();
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n = self.rest()[..digits].to_string();
            self.pos += digits;
            return Ok(n);
        }
        self.string_lit()
    }

    fn predicate(&mut self) -> Result<Predicate, PathError> {
        self.skip_ws();
        if self.eat("not(") {
            let operand = self.operand()?;
            self.skip_ws();
            if !self.eat(")") {
                return Err(
                    self.fail("expected `)` (`not` takes one operand: `not(*)`, `not(@a)`)")
                );
            }
            return Ok(Predicate {
                operand,
                op: Op::Absent,
            });
        }
        for (func, mk) in [
            ("starts-with(", Op::StartsWith as fn(String) -> Op),
            ("contains(", Op::Contains),
            ("matches(", |s| Op::Eq(s)),
        ] {
            if self.eat(func) {
                let operand = self.operand()?;
                self.skip_ws();
                if !self.eat(",") {
                    return Err(self.fail("expected `,`"));
                }
                let lit = self.string_lit()?;
                self.skip_ws();
                if !self.eat(")") {
                    return Err(self.fail("expected `)`"));
                }
                let op = if func == "matches(" {
                    Op::Matches(
                        Regex::new(&lit)
                            .map_err(|e| self.fail(format!("bad regex `{lit}`: {e}")))?,
                    )
                } else {
                    mk(lit)
                };
                return Ok(Predicate { operand, op });
            }
        }
        let operand = self.operand()?;
        self.skip_ws();
        let op = if self.eat("!=") {
            Op::Ne(self.literal()?)
        } else if self.eat("=") {
            Op::Eq(self.literal()?)
        } else {
            Op::Exists
        };
        Ok(Predicate { operand, op })
    }

    fn predicates(&mut self) -> Result<Vec<Predicate>, PathError> {
        let mut preds = Vec::new();
        while self.eat("[") {
            preds.push(self.predicate()?);
            self.skip_ws();
            if !self.eat("]") {
                return Err(self.fail("expected `]`"));
            }
        }
        Ok(preds)
    }
}

/// Parses an absolute record path. Content predicates (on child text or own text) are allowed
/// on the last step only: earlier steps must be decided when their start tag streams past.
pub fn parse_record_path(
    src: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<RecordPath, PathError> {
    let mut p = Parser {
        src: src.trim(),
        pos: 0,
        namespaces,
    };
    if !p.rest().starts_with('/') {
        return Err(p.fail("a record path must start with `/` or `//`"));
    }
    let mut steps = Vec::new();
    while !p.rest().is_empty() {
        let axis = if p.eat("//") {
            Axis::Descendant
        } else if p.eat("/") {
            Axis::Child
        } else {
            return Err(p.fail("expected `/`"));
        };
        let test = p.name_test()?;
        let predicates = p.predicates()?;
        steps.push(Step {
            axis,
            test,
            predicates,
        });
    }
    if steps.is_empty() {
        return Err(p.fail("empty path"));
    }
    let last = steps.len() - 1;
    for (i, s) in steps.iter().enumerate() {
        if i != last && s.predicates.iter().any(Predicate::needs_content) {
            return Err(err(
                src,
                "predicates on child text are only allowed on the last step (the record); \
                 earlier steps are decided from their start tag",
            ));
        }
    }
    Ok(RecordPath { steps })
}

/// Parses a relative path evaluated from a record, or `concat(...)` of several.
pub fn parse_rel_path(
    src: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<RelPath, PathError> {
    let src = src.trim();
    if let Some(args) = src.strip_prefix("concat(") {
        return concat::parse(src, args, namespaces);
    }
    parse_one_rel_path(src, namespaces)
}

pub(crate) fn parse_one_rel_path(
    src: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<RelPath, PathError> {
    let mut p = Parser {
        src,
        pos: 0,
        namespaces,
    };
    // Climbing above the record.
    let mut ups = 0;
    let mut named = None;
    if p.eat("ancestor::") {
        named = Some(p.name_test()?);
        if !p.rest().is_empty() && !p.eat("/") {
            return Err(p.fail("expected `/` after the ancestor"));
        }
    } else {
        while p.rest().starts_with("..") {
            p.pos += 2;
            ups += 1;
            if !p.rest().is_empty() && !p.eat("/") {
                return Err(p.fail("expected `/` after `..`"));
            }
        }
    }
    let leaf_of = |p: &mut Parser<'_>| -> Result<Option<Leaf>, PathError> {
        if p.rest().is_empty() || p.eat(".") && p.rest().is_empty() {
            return Ok(Some(Leaf::Text));
        }
        if p.eat("text()") {
            return Ok(Some(Leaf::Text));
        }
        if p.eat("name()") {
            return Ok(Some(Leaf::Name));
        }
        if p.eat("local-name()") {
            return Ok(Some(Leaf::LocalName));
        }
        if p.eat("position()") {
            return Ok(Some(Leaf::Position));
        }
        if p.eat("@") {
            return Ok(Some(Leaf::Attr(p.name_test()?)));
        }
        Ok(None)
    };
    if ups > 0 || named.is_some() {
        let sel = match named {
            Some(t) => AncestorSel::Named(t),
            None => AncestorSel::Up(ups),
        };
        if let Some(leaf) = leaf_of(&mut p)? {
            if !p.rest().is_empty() {
                return Err(p.fail("unexpected text after the end of the path"));
            }
            return Ok(RelPath::Up {
                sel,
                child: None,
                leaf,
            });
        }
        let child = p.name_test()?;
        if !p.rest().is_empty() {
            return Err(p.fail(
                "above the record only an attribute, name(), or the text of a leaf child can be read",
            ));
        }
        return Ok(RelPath::Up {
            sel,
            child: Some(child),
            leaf: Leaf::Text,
        });
    }
    let mut steps = Vec::new();
    loop {
        if let Some(leaf) = leaf_of(&mut p)? {
            if !p.rest().is_empty() {
                return Err(p.fail("unexpected text after the end of the path"));
            }
            return Ok(RelPath::Down { steps, leaf });
        }
        let test = p.name_test()?;
        let preds = p.predicates()?;
        steps.push((test, preds));
        if p.rest().is_empty() {
            return Ok(RelPath::Down {
                steps,
                leaf: Leaf::Text,
            });
        }
        if !p.eat("/") {
            return Err(p.fail("expected `/`"));
        }
    }
}

impl RelPath {
    /// The paths this one reads: itself, or the paths of a `concat`.
    pub fn paths(&self) -> impl Iterator<Item = &RelPath> {
        let parts: &[Part] = match self {
            RelPath::Concat(parts) => parts,
            _ => &[],
        };
        let own = (!matches!(self, RelPath::Concat(_))).then_some(self);
        own.into_iter().chain(parts.iter().filter_map(|p| match p {
            Part::Path(p) => Some(p),
            Part::Literal(_) => None,
        }))
    }

    pub fn needs_namespaces(&self) -> bool {
        let leaf_ns = |l: &Leaf| matches!(l, Leaf::Attr(t) if t.needs_namespaces());
        match self {
            RelPath::Down { steps, leaf } => {
                leaf_ns(leaf)
                    || steps.iter().any(|(t, preds)| {
                        t.needs_namespaces() || preds.iter().any(Predicate::needs_namespaces)
                    })
            }
            RelPath::Up { sel, child, leaf } => {
                leaf_ns(leaf)
                    || child.as_ref().is_some_and(NameTest::needs_namespaces)
                    || matches!(sel, AncestorSel::Named(t) if t.needs_namespaces())
            }
            RelPath::Concat(_) => self.paths().any(RelPath::needs_namespaces),
        }
    }
}

impl RecordPath {
    pub fn needs_namespaces(&self) -> bool {
        self.steps.iter().any(|s| {
            s.test.needs_namespaces() || s.predicates.iter().any(Predicate::needs_namespaces)
        })
    }
}

mod concat;
#[cfg(test)]
mod tests;
