//! Checks that the modules keep to their layers (see the crate's documentation): every import
//! goes down, `inbound` and `outbound` never import each other, and no group of modules imports
//! itself round in a cycle, whether counted file by file or module tree by module tree.
//!
//! The imports are read from the source: every path that starts with `crate`, `super`, `self`
//! or a child module's name, in `use` trees and in code, outside comments, strings and
//! `#[cfg(test)]` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path below the crate root (`[]` is `lib.rs`).
type ModPath = Vec<String>;

/// Which layer each top-level module is in; a module imports only from lower layers (or, in the
/// lowest, from its neighbours when no cycle results).
fn layer(top: Option<&str>) -> u8 {
    match top {
        // The crate root, and the fuzz targets' entry points, which reach any parser.
        None | Some("fuzzing") => 4,
        Some("inbound" | "outbound") => 3,
        Some("proxy") => 2,
        Some(_) => 1,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// The source without comments, string and character literals.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        out.push(match c {
            ':' if chars.get(i + 1) == Some(&':') => {
                i += 1;
                Token::PathSep
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Other,
        });
        i += 1;
    }
    out
}

/// Drops `#[cfg(test)] mod name { ... }` blocks.
fn without_test_modules(tokens: Vec<Token>) -> Vec<Token> {
    let ident = |t: &Token, s: &str| matches!(t, Token::Ident(i) if i == s);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // `#[cfg(test)] mod name {`: # [ cfg ( test ) ] mod name {
        if i + 9 < tokens.len()
            && ident(&tokens[i + 2], "cfg")
            && ident(&tokens[i + 4], "test")
            && ident(&tokens[i + 7], "mod")
            && tokens[i + 9] == Token::Open
        {
            let mut depth = 0usize;
            i += 9;
            while i < tokens.len() {
                match tokens[i] {
                    Token::Open => depth += 1,
                    Token::Close => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            continue;
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// Every path the tokens name: `use` trees expanded, and `a::b::c` sequences in code.
fn paths(tokens: &[Token]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if matches!(&tokens[i], Token::Ident(s) if s == "use") {
            i = use_tree(tokens, i + 1, &[], &mut out);
            continue;
        }
        if let Token::Ident(first) = &tokens[i] {
            let mut path = vec![first.clone()];
            let mut j = i + 1;
            while j + 1 < tokens.len() && tokens[j] == Token::PathSep {
                match &tokens[j + 1] {
                    Token::Ident(s) => path.push(s.clone()),
                    _ => break,
                }
                j += 2;
            }
            if path.len() > 1 {
                out.push(path);
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// Parses one use tree starting at `i` below `prefix`; returns where it ends.
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(s) if s == "as" => {
                // The alias names nothing new.
                i += 2;
                break;
            }
            Token::Ident(s) => {
                path.push(s.clone());
                i += 1;
            }
            Token::PathSep => i += 1,
            Token::Open => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, &path, out);
                    match tokens.get(i) {
                        Some(Token::Comma) => i += 1,
                        Some(Token::Close) => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if tokens.get(i) == Some(&Token::Close) {
                        i += 1;
                        break;
                    }
                }
                return i;
            }
            _ => break,
        }
    }
    // `a::{self, ..}` names `a` itself.
    if path.last().map(String::as_str) == Some("self") {
        path.pop();
    }
    if !path.is_empty() {
        out.push(path);
    }
    i
}

/// The modules of the crate at `src`, with the paths each names.
fn read_crate(src: &Path) -> BTreeMap<ModPath, Vec<Vec<String>>> {
    let mut modules = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the crate's source directory is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src");
            let mut module: ModPath = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main") if module.len() == 1 => continue,
                Some("lib" | "mod") => {
                    module.pop();
                }
                _ => {}
            }
            let source = std::fs::read_to_string(&path).expect("a readable source file");
            let named = paths(&without_test_modules(tokens(&strip(&source))));
            modules.insert(module, named);
        }
    }
    modules
}

/// The module a path names from inside `from`, if it is one of the crate's.
fn resolve(from: &ModPath, path: &[String], known: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut absolute: ModPath = match path[0].as_str() {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        _ => from.clone(),
    };
    let mut rest = if matches!(path[0].as_str(), "crate" | "self" | "super") {
        &path[1..]
    } else {
        path
    };
    while rest.first().map(String::as_str) == Some("super") {
        absolute.pop();
        rest = &rest[1..];
    }
    if !matches!(path[0].as_str(), "crate" | "self" | "super") {
        // A bare name: one of the current module's children, or not ours.
        let mut child = from.clone();
        child.push(path[0].clone());
        if !known.contains(&child) {
            return None;
        }
    }
    let mut best = known.contains(&absolute).then(|| absolute.clone());
    for segment in rest {
        absolute.push(segment.clone());
        if known.contains(&absolute) {
            best = Some(absolute.clone());
        }
    }
    best
}

/// Module-to-module imports, self-imports left out.
fn edges(modules: &BTreeMap<ModPath, Vec<Vec<String>>>) -> BTreeSet<(ModPath, ModPath)> {
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    let mut out = BTreeSet::new();
    for (from, named) in modules {
        for path in named {
            if let Some(to) = resolve(from, path, &known)
                && &to != from
            {
                out.insert((from.clone(), to));
            }
        }
    }
    out
}

/// A cycle in the graph, if there is one, as the modules along it.
fn find_cycle(edges: &BTreeSet<(ModPath, ModPath)>) -> Option<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
    }
    // 0: not seen, 1: on the current path, 2: done.
    let mut state: BTreeMap<&ModPath, u8> = BTreeMap::new();
    fn visit<'a>(
        node: &'a ModPath,
        next: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        state: &mut BTreeMap<&'a ModPath, u8>,
        stack: &mut Vec<&'a ModPath>,
    ) -> Option<Vec<ModPath>> {
        state.insert(node, 1);
        stack.push(node);
        for &to in next.get(node).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|m| *m == to).unwrap_or(0);
                    return Some(stack[start..].iter().map(|m| (*m).clone()).collect());
                }
                0 => {
                    if let Some(cycle) = visit(to, next, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node, 2);
        None
    }
    let nodes: Vec<&ModPath> = next.keys().copied().collect();
    for node in nodes {
        if state.get(node).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(node, &next, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// The edges with every module cut to its first `depth` segments (self-imports left out).
fn collapsed(edges: &BTreeSet<(ModPath, ModPath)>, depth: usize) -> BTreeSet<(ModPath, ModPath)> {
    edges
        .iter()
        .map(|(a, b)| {
            (
                a[..a.len().min(depth)].to_vec(),
                b[..b.len().min(depth)].to_vec(),
            )
        })
        .filter(|(a, b)| a != b)
        .collect()
}

fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

fn crate_edges() -> BTreeSet<(ModPath, ModPath)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    edges(&read_crate(&src))
}

fn m(path: &str) -> ModPath {
    path.split("::").map(str::to_owned).collect()
}

#[test]
fn imports_go_down_the_layers_and_inbound_and_outbound_stay_apart() {
    let edges = crate_edges();
    // The reading works: imports known to be there are found.
    for (from, to) in [
        ("inbound", "proxy::serve"),
        ("outbound", "proxy::policy"),
        ("outbound::transport", "proxy::client::h2"),
        ("inbound::app", "proxy::client::h1"),
        ("outbound::resilient", "resilience"),
    ] {
        assert!(
            edges.contains(&(m(from), m(to))),
            "{from} -> {to} not found; the import reader is broken: {edges:#?}"
        );
    }
    let mut wrong = Vec::new();
    for (from, to) in &edges {
        let (a, b) = (from.first(), to.first());
        if a == b {
            continue;
        }
        let (la, lb) = (layer(a.map(String::as_str)), layer(b.map(String::as_str)));
        if la < lb || (la == lb && la > 1) {
            wrong.push(format!("{} -> {}", name(from), name(to)));
        }
    }
    assert!(wrong.is_empty(), "imports that do not go down: {wrong:#?}");
}

#[test]
fn no_modules_import_each_other_round_in_a_cycle() {
    let edges = crate_edges();
    let deepest = edges.iter().map(|(a, b)| a.len().max(b.len())).max();
    for depth in 1..=deepest.unwrap_or(1) {
        if let Some(cycle) = find_cycle(&collapsed(&edges, depth)) {
            let names: Vec<String> = cycle.iter().map(name).collect();
            panic!(
                "modules cut to depth {depth} import each other round: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn the_checks_see_a_cycle_and_a_use_tree() {
    let cyclic: BTreeSet<(ModPath, ModPath)> = [
        (m("inbound::app"), m("outbound::h2")),
        (m("outbound::transport"), m("inbound::tls")),
    ]
    .into_iter()
    .collect();
    assert!(find_cycle(&cyclic).is_none(), "no cycle file by file");
    let top = find_cycle(&collapsed(&cyclic, 1)).expect("a cycle between the trees");
    assert_eq!(top.len(), 2);

    let source = "use crate::a::{self, b::{C, d::E as F}, g};\n\
                  // use crate::commented;\n\
                  fn f() { let s = \"crate::quoted\"; super::h::i(); x::y(); }\n\
                  #[cfg(test)]\nmod tests { use crate::only_tests; }\n";
    let found = paths(&without_test_modules(tokens(&strip(source))));
    let texts: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    for expected in [
        "crate::a",
        "crate::a::b::C",
        "crate::a::b::d::E",
        "crate::a::g",
    ] {
        assert!(
            texts.contains(&expected.to_owned()),
            "{expected}: {texts:?}"
        );
    }
    assert!(texts.contains(&"super::h::i".to_owned()), "{texts:?}");
    for absent in ["crate::commented", "crate::quoted", "crate::only_tests"] {
        assert!(!texts.iter().any(|t| t == absent), "{absent}: {texts:?}");
    }
}
