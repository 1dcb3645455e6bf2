//! A sink's disk buffer: batches written while the sink is failing, read back in order once it
//! answers again. Segment files of length-prefixed, checksummed records in
//! `<state>/buffer/<sink>/`; a record is one batch, its events in the [`Event`] disk form.
//! A record is fsynced before its events count as safe (the sources may then move their
//! checkpoints). The read position is kept in `cursor.json`; after a crash at most the records
//! delivered since it was last written are sent again. A torn record at the end of a segment (a
//! crash during a write) is cut off.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomically;
use crate::event::Event;

const HEADER: u64 = 12;

/// Identifies a record: its segment and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordId {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct RecordMeta {
    offset: u64,
    len: u32,
    lines: u32,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    size: u64,
    records: VecDeque<RecordMeta>,
}

/// What [`DiskBuffer::drop_oldest`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

/// One sink's disk buffer.
#[derive(Debug)]
pub struct DiskBuffer {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: Option<(u64, File)>,
    bytes: u64,
    lines: u64,
    in_flight: Option<RecordId>,
}

impl DiskBuffer {
    /// Opens (or creates) the buffer in `dir`, holding at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let segment_bytes = (max_bytes / 8).clamp(64 * 1024, 64 << 20);
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let cursor: Option<RecordId> = std::fs::read(dir.join("cursor.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut buffer = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            segments: VecDeque::new(),
            writer: None,
            bytes: 0,
            lines: 0,
            in_flight: None,
        };
        for seq in seqs {
            let path = segment_path(dir, seq);
            let mut segment = scan(seq, &path)?;
            if let Some(c) = cursor {
                if seq < c.segment {
                    segment.records.clear();
                } else if seq == c.segment {
                    segment.records.retain(|r| r.offset >= c.offset);
                }
            }
            if segment.records.is_empty() {
                std::fs::remove_file(&path)?;
                continue;
            }
            buffer.bytes += segment.size;
            buffer.lines += segment
                .records
                .iter()
                .map(|r| u64::from(r.lines))
                .sum::<u64>();
            buffer.segments.push_back(segment);
        }
        Ok(buffer)
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.records.is_empty())
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Events not yet read back.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Whether a record of `len` payload bytes fits.
    pub fn has_room(&self, len: usize) -> bool {
        self.bytes + HEADER + len as u64 <= self.max_bytes
    }

    /// The payload of a record holding `events`.
    pub fn encode(events: &[&Event]) -> Vec<u8> {
        let mut out = Vec::with_capacity(events.iter().map(|e| e.size_hint()).sum());
        for e in events {
            // An Event always serializes.
            let _ = serde_json::to_writer(&mut out, e);
            out.push(b'\n');
        }
        out
    }

    /// Appends a record and fsyncs it. On error nothing is kept of it.
    pub fn append(&mut self, payload: &[u8], lines: u32) -> std::io::Result<()> {
        let need_new = match &self.writer {
            None => true,
            Some((seq, _)) => self
                .segments
                .back()
                .is_none_or(|s| s.seq != *seq || s.size >= self.segment_bytes),
        };
        if need_new {
            let seq = self.segments.back().map_or(1, |s| s.seq + 1);
            let path = segment_path(&self.dir, seq);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            File::open(&self.dir)?.sync_all()?;
            self.segments.push_back(Segment {
                seq,
                path,
                size: 0,
                records: VecDeque::new(),
            });
            self.writer = Some((seq, file));
        }
        let (Some((_, file)), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut())
        else {
            return Err(std::io::Error::other("no segment to write"));
        };
        let len =
            u32::try_from(payload.len()).map_err(|_| std::io::Error::other("record too large"))?;
        let mut record = Vec::with_capacity(HEADER as usize + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(&lines.to_le_bytes());
        record.extend_from_slice(payload);
        let written = file.write_all(&record).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(segment.size);
            self.writer = None;
            return Err(e);
        }
        segment.records.push_back(RecordMeta {
            offset: segment.size,
            len,
            lines,
        });
        segment.size += record.len() as u64;
        self.bytes += record.len() as u64;
        self.lines += u64::from(lines);
        Ok(())
    }

    /// The oldest record not read back yet, decoded; it is "in flight" until consumed.
    /// An unreadable record is skipped (logged).
    pub fn peek(&mut self) -> std::io::Result<Option<(RecordId, Vec<Event>)>> {
        loop {
            let Some(segment) = self.segments.iter().find(|s| !s.records.is_empty()) else {
                return Ok(None);
            };
            let Some(meta) = segment.records.front().copied() else {
                return Ok(None);
            };
            let id = RecordId {
                segment: segment.seq,
                offset: meta.offset,
            };
            let mut payload = vec![0u8; meta.len as usize];
            File::open(&segment.path)?.read_exact_at(&mut payload, meta.offset + HEADER)?;
            let events: Result<Vec<Event>, _> = payload
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect();
            match events {
                Ok(events) => {
                    self.in_flight = Some(id);
                    return Ok(Some((id, events)));
                }
                Err(e) => {
                    tracing::error!(segment = %segment.path.display(), offset = meta.offset, error = %e, "unreadable record in the disk buffer; skipping it");
                    self.consume(id)?;
                }
            }
        }
    }

    /// The record was delivered (or set aside): forget it.
    pub fn consume(&mut self, id: RecordId) -> std::io::Result<()> {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
        let Some(index) = self.segments.iter().position(|s| s.seq == id.segment) else {
            return Ok(());
        };
        let segment = &mut self.segments[index];
        let Some(pos) = segment.records.iter().position(|r| r.offset == id.offset) else {
            return Ok(());
        };
        if let Some(r) = segment.records.remove(pos) {
            self.lines = self.lines.saturating_sub(u64::from(r.lines));
        }
        if segment.records.is_empty() {
            if self
                .writer
                .as_ref()
                .is_some_and(|(seq, _)| *seq == id.segment)
            {
                self.writer = None;
            }
            self.remove_segment(index)?;
        }
        self.save_cursor()
    }

    /// Drops the oldest segment not in flight, to make room.
    pub fn drop_oldest(&mut self) -> std::io::Result<Option<Dropped>> {
        let in_flight = self.in_flight.map(|r| r.segment);
        let Some(index) = self
            .segments
            .iter()
            .position(|s| Some(s.seq) != in_flight && !s.records.is_empty())
        else {
            return Ok(None);
        };
        let lines: u64 = self.segments[index]
            .records
            .iter()
            .map(|r| u64::from(r.lines))
            .sum();
        let bytes = self.segments[index].size;
        self.lines = self.lines.saturating_sub(lines);
        if self
            .writer
            .as_ref()
            .is_some_and(|(seq, _)| *seq == self.segments[index].seq)
        {
            self.writer = None;
        }
        self.remove_segment(index)?;
        self.save_cursor()?;
        Ok(Some(Dropped { lines, bytes }))
    }

    fn remove_segment(&mut self, index: usize) -> std::io::Result<()> {
        if let Some(s) = self.segments.remove(index) {
            self.bytes = self.bytes.saturating_sub(s.size);
            std::fs::remove_file(&s.path)?;
        }
        Ok(())
    }

    /// Writes the read position (the oldest record left).
    pub fn save_cursor(&self) -> std::io::Result<()> {
        let cursor = self
            .segments
            .iter()
            .find_map(|s| {
                s.records.front().map(|r| RecordId {
                    segment: s.seq,
                    offset: r.offset,
                })
            })
            .unwrap_or(RecordId {
                segment: self.segments.back().map_or(0, |s| s.seq + 1),
                offset: 0,
            });
        let bytes = serde_json::to_vec(&cursor).map_err(std::io::Error::other)?;
        let path = self.dir.join("cursor.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Writes the cursor durably (at shutdown).
    pub fn sync(&self) -> std::io::Result<()> {
        self.save_cursor()?;
        let path = self.dir.join("cursor.json");
        let bytes = std::fs::read(&path)?;
        write_atomically(&path, &bytes)
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Reads a segment's record headers; cuts a torn or corrupt tail off.
fn scan(seq: u64, path: &Path) -> std::io::Result<Segment> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut records = VecDeque::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER as usize];
    while offset + HEADER <= size {
        file.read_exact_at(&mut header, offset)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let lines = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if offset + HEADER + u64::from(len) > size {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, offset + HEADER)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        records.push_back(RecordMeta { offset, len, lines });
        offset += HEADER + u64::from(len);
    }
    if offset < size {
        tracing::warn!(segment = %path.display(), kept = offset, size, "cutting a torn record off the disk buffer");
        file.set_len(offset)?;
        file.sync_all()?;
    }
    Ok(Segment {
        seq,
        path: path.to_owned(),
        size: offset,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize, tag: &str) -> Vec<Event> {
        (0..n).map(|i| Event::new(format!("{tag}-{i}"))).collect()
    }

    fn put(b: &mut DiskBuffer, evs: &[Event]) {
        let refs: Vec<&Event> = evs.iter().collect();
        b.append(&DiskBuffer::encode(&refs), evs.len() as u32)
            .unwrap();
    }

    #[test]
    fn records_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 1 << 20).unwrap();
        put(&mut b, &events(3, "a"));
        put(&mut b, &events(2, "b"));
        assert_eq!(b.lines(), 5);
        let (id, got) = b.peek().unwrap().unwrap();
        assert_eq!(
            got.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["a-0", "a-1", "a-2"]
        );
        b.consume(id).unwrap();
        drop(b);
        let mut b = DiskBuffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.lines(), 2);
        let (id, got) = b.peek().unwrap().unwrap();
        assert_eq!(got[1].message, "b-1");
        b.consume(id).unwrap();
        assert!(b.is_empty());
        assert!(b.peek().unwrap().is_none());
    }

    #[test]
    fn consuming_everything_leaves_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 1 << 20).unwrap();
        for round in 0..3 {
            put(&mut b, &events(2, "a"));
            put(&mut b, &events(2, "b"));
            for _ in 0..2 {
                let (id, _) = b.peek().unwrap().unwrap();
                b.consume(id).unwrap();
            }
            assert!(b.is_empty(), "round {round}");
            assert_eq!((b.bytes(), b.lines()), (0, 0), "round {round}");
        }
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segments, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 1 << 20).unwrap();
        put(&mut b, &events(2, "a"));
        put(&mut b, &events(2, "b"));
        drop(b);
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut b = DiskBuffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.lines(), 2);
        let (_, got) = b.peek().unwrap().unwrap();
        assert_eq!(got[0].message, "a-0");
    }

    #[test]
    fn full_and_drop_oldest_spares_the_record_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB: a 10 KiB record each time; 640 KiB at most.
        let mut b = DiskBuffer::open(dir.path(), 640 * 1024).unwrap();
        let big: Vec<Event> = (0..10)
            .map(|i| Event::new(format!("{i}{}", "x".repeat(1000))))
            .collect();
        let refs: Vec<&Event> = big.iter().collect();
        let payload = DiskBuffer::encode(&refs);
        while b.has_room(payload.len()) {
            b.append(&payload, 10).unwrap();
        }
        assert!(b.bytes() <= 640 * 1024);
        let before = b.lines();
        let (id, _) = b.peek().unwrap().unwrap();
        let dropped = b.drop_oldest().unwrap().unwrap();
        assert!(dropped.lines >= 10);
        assert_eq!(b.lines(), before - dropped.lines);
        assert!(b.has_room(payload.len()));
        b.consume(id).unwrap();
        assert_eq!(b.lines(), before - dropped.lines - 10);
    }
}
