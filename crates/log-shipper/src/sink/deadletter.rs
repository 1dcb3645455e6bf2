//! The dead-letter file: events a sink refused for good (a 4xx other than 408 and 429, or a
//! per-event refusal), one JSON object per line with the sink, the status and the reason, in
//! `<state>/dead-letter/<sink>.ndjson`. Fsynced before the events count as done. Past
//! `MAX_BYTES` the file is renamed `<sink>.ndjson.1` (replacing the previous one) and a new one
//! is started.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::event::{Event, write_json_string};

const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug)]
pub struct DeadLetter {
    sink: String,
    path: PathBuf,
    file: Option<(File, u64)>,
}

impl DeadLetter {
    pub fn new(state_dir: &Path, sink: &str) -> Self {
        Self {
            sink: sink.to_owned(),
            path: state_dir.join("dead-letter").join(format!("{sink}.ndjson")),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the events with why they were refused.
    pub fn write(&mut self, events: &[&Event], status: &str, reason: &str) -> std::io::Result<()> {
        let now = crate::event::Event::new(String::new()).timestamp_rfc3339();
        let mut out = Vec::new();
        for event in events {
            out.extend_from_slice(b"{\"time\":\"");
            out.extend_from_slice(now.as_bytes());
            out.extend_from_slice(b"\",\"sink\":");
            write_json_string(&self.sink, &mut out);
            out.extend_from_slice(b",\"status\":");
            write_json_string(status, &mut out);
            out.extend_from_slice(b",\"reason\":");
            write_json_string(reason, &mut out);
            out.extend_from_slice(b",\"event\":");
            event.write_json(&mut out);
            out.extend_from_slice(b"}\n");
        }
        let (file, size) = self.open()?;
        file.write_all(&out)?;
        file.sync_data()?;
        *size += out.len() as u64;
        if *size > MAX_BYTES {
            self.file = None;
            std::fs::rename(&self.path, self.path.with_extension("ndjson.1"))?;
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<&mut (File, u64)> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let size = file.metadata()?.len();
            self.file = Some((file, size));
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("dead-letter file not open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_events_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetter::new(dir.path(), "central");
        let e = Event::new("bad \"line\"".into());
        d.write(&[&e], "400", "400 Bad Request: no").unwrap();
        let text = std::fs::read_to_string(d.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["sink"], "central");
        assert_eq!(v["status"], "400");
        assert_eq!(v["event"]["message"], "bad \"line\"");
    }
}
