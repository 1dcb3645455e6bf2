//! One open file being read: lines with their offsets, over-long lines cut, a last line without
//! its newline held back until the newline comes (or the file is let go).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::source::file::identity::Fingerprint;
use crate::source::{LineSpan, RawChunk, StreamInfo};

/// Whether the path still names the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailState {
    /// The path names it: the app writes it.
    Active,
    /// Renamed away, deleted, or a copy-truncate copy: read to its end, then let go once it has
    /// not grown for the rotate wait.
    Draining,
}

/// An open file and where reading is in it.
#[derive(Debug)]
pub struct Tail {
    pub file: File,
    /// Where the file was found (the name the app writes to, for an active file).
    pub path: PathBuf,
    pub dev_ino: (u64, u64),
    pub fingerprint: Fingerprint,
    pub stream: Arc<StreamInfo>,
    pub state: TailState,
    /// The size at the last look.
    pub last_size: u64,
    /// Since when it has been at its end without growing.
    pub idle_since: Option<Instant>,
    read_pos: u64,
    line_start: u64,
    partial: Vec<u8>,
    partial_truncated: bool,
}

/// What one read gave.
#[derive(Debug, Default)]
pub struct Read {
    pub chunk: Option<RawChunk>,
    pub bytes: u64,
    /// The budget ran out before the end of the file.
    pub more: bool,
}

impl Tail {
    /// Starts reading `file` at `offset` (the start of a line).
    pub fn new(
        file: File,
        path: PathBuf,
        dev_ino: (u64, u64),
        fingerprint: Fingerprint,
        stream: Arc<StreamInfo>,
        offset: u64,
        size: u64,
    ) -> Self {
        Self {
            file,
            path,
            dev_ino,
            fingerprint,
            stream,
            state: TailState::Active,
            last_size: size,
            idle_since: None,
            read_pos: offset,
            line_start: offset,
            partial: Vec::new(),
            partial_truncated: false,
        }
    }

    /// The offset up to which the file has been read (a held-back partial line included).
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// The offset just past the last complete line read.
    pub fn line_start(&self) -> u64 {
        self.line_start
    }

    /// Starts over at offset 0 with a new stream (the file was truncated in place).
    pub fn restart(&mut self, stream: Arc<StreamInfo>, fingerprint: Fingerprint, size: u64) {
        self.stream = stream;
        self.fingerprint = fingerprint;
        self.read_pos = 0;
        self.line_start = 0;
        self.partial.clear();
        self.partial_truncated = false;
        self.last_size = size;
        self.idle_since = None;
    }

    /// Reads up to `budget` bytes; lines longer than `max_line` keep their first `max_line`
    /// bytes and are marked truncated.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        max_line: usize,
    ) -> std::io::Result<Read> {
        let mut data = Vec::new();
        let mut lines = Vec::new();
        let mut total = 0usize;
        let mut more = false;
        loop {
            if total >= budget {
                more = true;
                break;
            }
            let want = scratch.len().min(budget - total);
            let n = self.file.read_at(&mut scratch[..want], self.read_pos)?;
            if n == 0 {
                break;
            }
            self.split(&scratch[..n], max_line, &mut data, &mut lines);
            total += n;
            self.read_pos += n as u64;
        }
        let chunk = (!lines.is_empty()).then(|| RawChunk {
            stream: self.stream.clone(),
            data,
            lines,
        });
        Ok(Read {
            chunk,
            bytes: total as u64,
            more,
        })
    }

    fn split(
        &mut self,
        bytes: &[u8],
        max_line: usize,
        data: &mut Vec<u8>,
        lines: &mut Vec<LineSpan>,
    ) {
        let base = self.read_pos;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i..].iter().position(|b| *b == b'\n') {
                Some(k) => {
                    let end = base + (i + k + 1) as u64;
                    let from = data.len();
                    data.extend_from_slice(&self.partial);
                    let mut truncated = self.partial_truncated;
                    let room = max_line.saturating_sub(self.partial.len());
                    let seg = &bytes[i..i + k];
                    if seg.len() > room {
                        data.extend_from_slice(&seg[..room]);
                        truncated = true;
                    } else {
                        data.extend_from_slice(seg);
                    }
                    if !truncated && data.len() > from && data.last() == Some(&b'\r') {
                        data.pop();
                    }
                    lines.push(LineSpan {
                        range: (from, data.len()),
                        start: self.line_start,
                        end,
                        truncated,
                    });
                    self.partial.clear();
                    self.partial_truncated = false;
                    self.line_start = end;
                    i += k + 1;
                }
                None => {
                    let seg = &bytes[i..];
                    let room = max_line.saturating_sub(self.partial.len());
                    if seg.len() > room {
                        self.partial.extend_from_slice(&seg[..room]);
                        self.partial_truncated = true;
                    } else {
                        self.partial.extend_from_slice(seg);
                    }
                    i = bytes.len();
                }
            }
        }
    }

    /// The held-back last line, as a line of its own: for a file that will not grow again.
    pub fn take_partial(&mut self) -> Option<RawChunk> {
        if self.read_pos == self.line_start {
            return None;
        }
        let data = std::mem::take(&mut self.partial);
        let line = LineSpan {
            range: (0, data.len()),
            start: self.line_start,
            end: self.read_pos,
            truncated: self.partial_truncated,
        };
        self.partial_truncated = false;
        self.line_start = self.read_pos;
        Some(RawChunk {
            stream: self.stream.clone(),
            data,
            lines: vec![line],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckStream;
    use std::io::Write;

    fn tail_of(path: &std::path::Path, offset: u64) -> Tail {
        let file = File::open(path).unwrap();
        let stream = Arc::new(StreamInfo {
            id: 1,
            input: "t".into(),
            path: None,
            ack: AckStream::new(offset),
            format: Default::default(),
        });
        Tail::new(
            file,
            path.to_owned(),
            (0, 0),
            Fingerprint { len: 0, crc: 0 },
            stream,
            offset,
            0,
        )
    }

    fn texts(chunk: &RawChunk) -> Vec<(String, u64, u64, bool)> {
        chunk
            .lines
            .iter()
            .map(|l| {
                (
                    String::from_utf8_lossy(chunk.bytes(l)).into_owned(),
                    l.start,
                    l.end,
                    l.truncated,
                )
            })
            .collect()
    }

    #[test]
    fn lines_offsets_partial_lines_and_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"one\r\ntwo\nthree-is-long\npar").unwrap();
        let mut t = tail_of(&p, 0);
        let mut scratch = vec![0u8; 4]; // smaller than a line: lines span reads
        let r = t.read(&mut scratch, 1 << 20, 5).unwrap();
        let chunk = r.chunk.unwrap();
        assert_eq!(
            texts(&chunk),
            vec![
                ("one".into(), 0, 5, false),
                ("two".into(), 5, 9, false),
                ("three".into(), 9, 23, true),
            ]
        );
        assert_eq!(t.read_pos(), 26);
        assert_eq!(t.line_start(), 23);
        f.write_all(b"tial\n").unwrap();
        let chunk = t.read(&mut scratch, 1 << 20, 64).unwrap().chunk.unwrap();
        assert_eq!(texts(&chunk), vec![("partial".into(), 23, 31, false)]);
        f.write_all(b"no newline").unwrap();
        assert!(t.read(&mut scratch, 1 << 20, 64).unwrap().chunk.is_none());
        let last = t.take_partial().unwrap();
        assert_eq!(texts(&last), vec![("no newline".into(), 31, 41, false)]);
        assert!(t.take_partial().is_none());
    }

    #[test]
    fn the_budget_bounds_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a\n".repeat(100)).unwrap();
        let mut t = tail_of(&p, 10);
        let mut scratch = vec![0u8; 16];
        let r = t.read(&mut scratch, 32, 64).unwrap();
        assert!(r.more);
        assert_eq!(r.bytes, 32);
        assert_eq!(r.chunk.unwrap().lines.len(), 16);
    }
}
