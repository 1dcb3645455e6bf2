//! `concat(path, "text", path, ...)`: one value joined from relative paths and literals.

use std::collections::BTreeMap;

use super::{Part, PathError, RelPath, err, parse_one_rel_path};

/// The arguments of `concat(`...`)`: relative paths and quoted literals, split on the commas
/// outside quotes and brackets.
pub(super) fn parse(
    src: &str,
    args: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<RelPath, PathError> {
    let Some(args) = args.trim_end().strip_suffix(')') else {
        return Err(err(src, "expected `)` at the end of `concat(...)`"));
    };
    let mut parts = Vec::new();
    let (mut start, mut quote, mut depth) = (0usize, None, 0usize);
    let mut pieces = Vec::new();
    for (i, c) in args.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                pieces.push(&args[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(err(src, "unterminated string"));
    }
    pieces.push(&args[start..]);
    for piece in pieces {
        let piece = piece.trim();
        let quoted = piece.len() >= 2
            && (piece.starts_with('"') && piece.ends_with('"')
                || piece.starts_with('\'') && piece.ends_with('\''));
        if quoted {
            parts.push(Part::Literal(piece[1..piece.len() - 1].to_string()));
        } else if piece.is_empty() || piece.starts_with("concat(") {
            return Err(err(
                src,
                "`concat` takes relative paths and quoted strings, separated by commas",
            ));
        } else {
            let path = parse_one_rel_path(piece, namespaces)
                .map_err(|e| err(src, format!("`{}`: {}", e.path, e.message)))?;
            parts.push(Part::Path(path));
        }
    }
    if !parts.iter().any(|p| matches!(p, Part::Path(_))) {
        return Err(err(src, "`concat` needs at least one path"));
    }
    Ok(RelPath::Concat(parts))
}
