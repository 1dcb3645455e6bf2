//! What a signature covers, cut out of a raw git object exactly as git cuts it.
//!
//! - A commit carries its signature in a `gpgsig` header (continuation lines start with a
//!   space); the signed payload is the commit object without that header. Signature headers of
//!   the other hash algorithm (`gpgsig-sha256`) are left out of the payload too, as git does.
//! - An annotated tag carries its signature at the end of the message: the last line that
//!   starts a signature block begins it, and the payload is everything before it.
//!
//! The time a signature is checked at (SSH's `valid-after`/`valid-before`) is the committer's
//! or tagger's timestamp, as git passes `-Overify-time` to `ssh-keygen`.

/// The armour lines git recognises as the start of a signature.
const SIGNATURE_STARTS: [&[u8]; 4] = [
    b"-----BEGIN PGP SIGNATURE-----",
    b"-----BEGIN PGP MESSAGE-----",
    b"-----BEGIN SSH SIGNATURE-----",
    b"-----BEGIN SIGNED MESSAGE-----",
];

/// The kind of object a signature was cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Commit,
    Tag,
}

/// A signed object split into what was signed and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub payload: Vec<u8>,
    /// The armoured signature, as written in the object.
    pub signature: Vec<u8>,
    /// Unix seconds of the committer (commit) or tagger (tag) line, if it has one.
    pub timestamp: Option<i64>,
}

/// The signature format, from its armour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenPgp,
    Ssh,
    /// gpgsm's X.509 (`-----BEGIN SIGNED MESSAGE-----`): not supported.
    X509,
    Unknown,
}

impl Signed {
    pub fn format(&self) -> Format {
        let text = self.signature.trim_ascii_start();
        if text.starts_with(b"-----BEGIN PGP ") {
            Format::OpenPgp
        } else if text.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            Format::Ssh
        } else if text.starts_with(b"-----BEGIN SIGNED MESSAGE-----") {
            Format::X509
        } else {
            Format::Unknown
        }
    }
}

/// Splits a raw object (the bytes after git's `<type> <size>\0` header). None: not signed.
pub fn split(kind: ObjectKind, raw: &[u8]) -> Option<Signed> {
    match kind {
        ObjectKind::Commit => split_commit(raw),
        ObjectKind::Tag => split_tag(raw),
    }
}

/// git's `parse_buffer_signed_by_header` for a SHA-1 repository.
fn split_commit(raw: &[u8]) -> Option<Signed> {
    const HEADER: &[u8] = b"gpgsig";
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature = Vec::new();
    let (mut in_signature, mut saw_signature, mut other_signature) = (false, false, false);
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        let mut sig: Option<&[u8]> = None;
        if in_signature && line.first() == Some(&b' ') {
            sig = Some(&line[1..]);
        } else if line.starts_with(HEADER) && line.get(HEADER.len()) == Some(&b' ') {
            sig = Some(&line[HEADER.len() + 1..]);
            other_signature = false;
        } else if line.starts_with(b"gpgsig") {
            other_signature = true;
        } else if other_signature && line.first() != Some(&b' ') {
            other_signature = false;
        }
        match sig {
            Some(s) => {
                signature.extend_from_slice(s);
                saw_signature = true;
                in_signature = true;
                rest = after;
            }
            None => {
                in_signature = false;
                if line.first() == Some(&b'\n') {
                    // The end of the header: the message follows unchanged.
                    payload.extend_from_slice(rest);
                    break;
                }
                if !other_signature {
                    payload.extend_from_slice(line);
                }
                rest = after;
            }
        }
    }
    saw_signature.then(|| Signed {
        timestamp: header_time(&payload, b"committer "),
        payload,
        signature,
    })
}

/// git's `parse_signed_buffer`: the last line starting a signature block begins it.
fn split_tag(raw: &[u8]) -> Option<Signed> {
    let mut start = None;
    let mut offset = 0;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if SIGNATURE_STARTS.iter().any(|s| line.starts_with(s)) {
            start = Some(offset);
        }
        offset += line.len();
    }
    let start = start?;
    let payload = raw[..start].to_vec();
    Some(Signed {
        timestamp: header_time(&payload, b"tagger "),
        signature: raw[start..].to_vec(),
        payload,
    })
}

/// The timestamp of an identity header line (`committer Name <mail> 1700000000 +0100`).
fn header_time(object: &[u8], header: &[u8]) -> Option<i64> {
    let line = object
        .split(|b| *b == b'\n')
        .take_while(|l| !l.is_empty())
        .find(|l| l.starts_with(header))?;
    let after_mail = &line[line.iter().rposition(|b| *b == b'>')? + 1..];
    let text = std::str::from_utf8(after_mail).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The header lines of a commit or tag that name what it points at, for log lines.
pub fn header_value<'a>(object: &'a [u8], header: &str) -> Option<&'a str> {
    object
        .split(|b| *b == b'\n')
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.strip_prefix(header.as_bytes())
                .and_then(|v| v.strip_prefix(b" "))
        })
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED_COMMIT: &str = "tree 9bedf67800b2923982bdf60c89c57ce6ee2d9a4c\n\
parent 7f1c1f5d4b0b6a6c6c1a0fbb1b1d1f3d5a7c9e11\n\
author A U Thor <a@example.invalid> 1700000000 +0100\n\
committer C O Mitter <c@example.invalid> 1700000100 +0100\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n \
U1NIU0lHAAAAAQ\n \
-----END SSH SIGNATURE-----\n\
\n\
the message\n\
gpgsig in the body is not a header\n";

    #[test]
    fn commit_payload_is_the_object_without_its_signature_header() {
        let s = split(ObjectKind::Commit, SIGNED_COMMIT.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(s.payload).unwrap(),
            "tree 9bedf67800b2923982bdf60c89c57ce6ee2d9a4c\n\
parent 7f1c1f5d4b0b6a6c6c1a0fbb1b1d1f3d5a7c9e11\n\
author A U Thor <a@example.invalid> 1700000000 +0100\n\
committer C O Mitter <c@example.invalid> 1700000100 +0100\n\
\n\
the message\n\
gpgsig in the body is not a header\n"
        );
        assert_eq!(
            String::from_utf8(s.signature).unwrap(),
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ\n-----END SSH SIGNATURE-----\n"
        );
        assert_eq!(s.timestamp, Some(1_700_000_100));
    }

    #[test]
    fn the_other_algorithms_signature_header_is_left_out_of_the_payload() {
        let raw = "tree 1\ncommitter c <c> 5 +0000\ngpgsig-sha256 -----BEGIN PGP SIGNATURE-----\n x\n -----END PGP SIGNATURE-----\ngpgsig -----BEGIN PGP SIGNATURE-----\n y\n -----END PGP SIGNATURE-----\nencoding UTF-8\n\nm\n";
        let s = split(ObjectKind::Commit, raw.as_bytes()).unwrap();
        assert_eq!(s.format(), Format::OpenPgp);
        assert_eq!(
            String::from_utf8(s.payload).unwrap(),
            "tree 1\ncommitter c <c> 5 +0000\nencoding UTF-8\n\nm\n"
        );
        assert!(
            s.signature
                .starts_with(b"-----BEGIN PGP SIGNATURE-----\ny\n")
        );
    }

    #[test]
    fn unsigned_objects_have_no_signature() {
        assert_eq!(
            split(
                ObjectKind::Commit,
                b"tree 1\ncommitter c <c> 5 +0000\n\nm\n"
            ),
            None
        );
        assert_eq!(
            split(
                ObjectKind::Tag,
                b"object 1\ntype commit\ntag v1\ntagger t <t> 9 +0000\n\nrelease\n"
            ),
            None
        );
    }

    #[test]
    fn tag_signature_starts_at_the_last_armour_line() {
        let raw = "object 1\ntype commit\ntag v1\ntagger T <t@example.invalid> 1700000200 +0000\n\nrelease\n-----BEGIN PGP SIGNATURE-----\nquoted, not the signature\n-----END PGP SIGNATURE-----\n-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n";
        let s = split(ObjectKind::Tag, raw.as_bytes()).unwrap();
        assert!(
            String::from_utf8_lossy(&s.payload)
                .ends_with("quoted, not the signature\n-----END PGP SIGNATURE-----\n")
        );
        assert_eq!(s.format(), Format::Ssh);
        assert_eq!(s.timestamp, Some(1_700_000_200));
    }

    #[test]
    fn header_values_come_from_the_header_only() {
        let raw = b"object abc\ntype commit\ntag v1\n\ntag in body\n";
        assert_eq!(header_value(raw, "tag"), Some("v1"));
        assert_eq!(header_value(raw, "object"), Some("abc"));
        assert_eq!(header_value(raw, "tagger"), None);
    }
}
