//! The files of a work folder: each segment's video, written under a
//! temporary name and renamed when complete, and its record (frames, first
//! and last timestamp, size and checksum), written last. A segment is
//! finished when its record is there and agrees with its file, so a killed
//! job leaves nothing that looks finished.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::plan::{Plan, Segment, count};

pub fn segment_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("segment-{index:05}.mp4"))
}

/// Where a segment is written while it renders (same extension: the muxer is
/// chosen by it).
pub fn partial_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("segment-{index:05}.partial.mp4"))
}

pub fn record_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("segment-{index:05}.json"))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it there.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What a finished segment's record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub frames: u64,
    pub first_pts: u64,
    pub last_pts: u64,
    pub bytes: u64,
    /// FNV-1a 64 of the file, in hex.
    pub checksum: String,
}

impl Record {
    pub fn to_json(&self) -> Value {
        json!({
            "frames": self.frames,
            "first_pts": self.first_pts,
            "last_pts": self.last_pts,
            "bytes": self.bytes,
            "checksum": self.checksum,
        })
    }

    fn from_json(v: &Value) -> Result<Record, String> {
        Ok(Record {
            frames: count(v, "frames")? as u64,
            first_pts: count(v, "first_pts")? as u64,
            last_pts: count(v, "last_pts")? as u64,
            bytes: count(v, "bytes")? as u64,
            checksum: v
                .get("checksum")
                .and_then(Value::as_str)
                .ok_or("no 'checksum'")?
                .to_owned(),
        })
    }

    pub fn read(path: &Path) -> Result<Record, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Record::from_json(&value)
    }
}

/// The size and FNV-1a 64 checksum of a file.
pub fn checksum(path: &Path) -> Result<(u64, String), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        for &b in &buf[..n] {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok((bytes, format!("{hash:016x}")))
}

/// Where a segment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentState {
    Done(Record),
    /// Its file is being written (or was, by a job that was killed).
    Running,
    Pending,
}

/// The state of `segment` from its files (the record's size against the
/// file's; `verify` reads the whole file).
pub fn state(dir: &Path, segment: &Segment) -> SegmentState {
    let file = segment_file(dir, segment.index);
    if let Ok(record) = Record::read(&record_file(dir, segment.index))
        && std::fs::metadata(&file).is_ok_and(|m| m.len() == record.bytes)
    {
        return SegmentState::Done(record);
    }
    if partial_file(dir, segment.index).exists() {
        SegmentState::Running
    } else {
        SegmentState::Pending
    }
}

/// Checks a finished segment in full: its record, its file's size and
/// checksum, its frame count and its first and last timestamps against the
/// plan. The error names the segment and what is wrong.
pub fn verify(dir: &Path, plan: &Plan, segment: &Segment) -> Result<Record, String> {
    let file = segment_file(dir, segment.index);
    let name = format!("segment {} ({})", segment.index, file.display());
    let record = Record::read(&record_file(dir, segment.index))
        .map_err(|e| format!("{name} is not finished (no valid record: {e})"))?;
    let (bytes, sum) = checksum(&file).map_err(|e| format!("{name}: {e}"))?;
    if bytes != record.bytes || sum != record.checksum {
        return Err(format!(
            "{name} is damaged: {bytes} bytes with checksum {sum}, its record says {} bytes \
             with checksum {}",
            record.bytes, record.checksum
        ));
    }
    let want = (
        segment.owned() as u64,
        plan.pts(segment.start),
        plan.pts(segment.end - 1),
    );
    if (record.frames, record.first_pts, record.last_pts) != want {
        return Err(format!(
            "{name} holds {} frames from {} to {} ns, the plan wants {} frames from {} to {} ns",
            record.frames, record.first_pts, record.last_pts, want.0, want.1, want.2
        ));
    }
    Ok(record)
}
