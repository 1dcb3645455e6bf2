//! What the fuzz targets share: cutting one input into several, and a config file to hand to a
//! sidecar's real loader (which reads its `--config` from a path).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Splits `data` at its first NUL byte: (before, after). Without one, the second part is empty.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Splits `data` at its first two NUL bytes.
pub fn split3(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (a, rest) = split2(data);
    let (b, c) = split2(rest);
    (a, b, c)
}

/// The bytes as text, or `None` when they are not UTF-8 (the sidecars read their text inputs
/// as UTF-8 and refuse the rest before any parser sees them).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Writes `data` to this process's config file and returns its path: one file per fuzzing
/// process, rewritten for each input.
pub fn config_file(data: &[u8]) -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sidecars-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz config directory");
        dir.join("config.yaml")
    });
    std::fs::write(path, data).expect("writing the fuzz config file");
    path.clone()
}

/// Chunk sizes for feeding a stream parser: taken from the input's first byte, so the fuzzer
/// explores where reads are cut.
pub fn chunk_size(data: &[u8]) -> usize {
    data.first().map_or(1, |&b| usize::from(b % 64) + 1)
}

/// The xml-adapter's engines for these mappings (each must load).
pub fn engines(mappings: &[&str]) -> Vec<xml_adapter::engine::Engine> {
    mappings
        .iter()
        .map(|m| {
            xml_adapter::engine::Engine::new(
                xml_adapter::mapping::Mapping::parse(m, "fuzz").expect("the fuzz mappings load"),
            )
        })
        .collect()
}

/// The input's first byte picks one of `engines`: (the engine, that byte, the document after
/// it); `None` for an empty input.
pub fn pick<'e, 'd>(
    engines: &'e [xml_adapter::engine::Engine],
    data: &'d [u8],
) -> Option<(&'e xml_adapter::engine::Engine, u8, &'d [u8])> {
    let (&first, doc) = data.split_first()?;
    Some((&engines[usize::from(first) % engines.len()], first, doc))
}

/// Reads `doc` with the xml-adapter's `engine` in pieces (cut by `chunk_size(&[cut])`) and
/// asserts it translates as `whole`, the same document read at once, did.
pub fn assert_same_in_pieces(
    engine: &xml_adapter::engine::Engine,
    doc: &[u8],
    cut: u8,
    whole: &impl std::fmt::Debug,
) {
    let mut t = xml_adapter::engine::Translator::new(engine);
    let mut pieces = Ok(());
    for chunk in doc.chunks(chunk_size(&[cut])) {
        pieces = t.feed(chunk);
        if pieces.is_err() {
            break;
        }
    }
    let pieces = pieces.and_then(|()| t.finish());
    assert_eq!(
        format!("{whole:?}"),
        format!("{pieces:?}"),
        "read whole and in pieces"
    );
}
