//! Durable file operations and the checksummed record framing shared by every log of this crate.
//!
//! # Durability helpers
//! - [`fsync_file`] / [`fdatasync_file`]: flush a file's data (and metadata) to stable storage.
//! - [`fsync_dir`]: flush a directory, which makes file creations, renames and removals in it
//!   durable. POSIX does not promise that creating a file makes its directory entry durable; a
//!   log that creates a file must fsync the directory before it relies on the file existing.
//! - [`create_dir_durable`]: `create_dir_all` plus an fsync of the parent of every directory
//!   it created.
//! - [`atomic_write`]: write a temporary file beside the target, fsync it, rename it over the
//!   target, fsync the directory. Readers see the old bytes or the new bytes, never a mix.
//! - [`truncate_durable`]: cut a file and fsync the new length.
//! - [`release_cached`]: tell the kernel that a synced range will not be read soon, so its
//!   clean pages leave the page cache (a write-only log has no use for them).
//!
//! # Record framing (crate-internal)
//! The WAL, the branch logs (`blocks.log`) and the checkpoint log all store records as
//! ```text
//! frame := len:u32 | checksum:u64 | payload (len bytes)      checksum = xxh3-64(len bytes || payload)
//! ```
//! little-endian. [`FrameReader`] streams frames out of a file; when a frame fails its checks,
//! [`classify_tail`] decides whether the rest of the file is a *torn tail* (nothing valid
//! follows: an interrupted write, safe to cut) or corruption (a valid frame follows the bad one:
//! acknowledged data may be damaged, so the caller must report it, never skip it).
//!
//! Bounds: a tail longer than [`TAIL_SCAN_BYTES_MAX`] is never treated as torn; the scan for a
//! valid frame hashes at most [`TAIL_SCAN_HASH_BYTES_MAX`] bytes before giving up and
//! reporting corruption. Both err on the side of reporting.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

/// Bytes in a frame header: `len:u32 | checksum:u64`.
pub(crate) const FRAME_HEADER_LEN: usize = 12;

/// A torn tail longer than this is reported as corruption rather than cut: a write interrupted by
/// a crash is bounded by one segment (WAL) or one record (branch and checkpoint logs).
pub const TAIL_SCAN_BYTES_MAX: u64 = 256 << 20;

/// Work bound for the scan that looks for a valid frame after a bad one.
pub const TAIL_SCAN_HASH_BYTES_MAX: u64 = 1 << 30;

/// A torn tail found by a read-only open: the bytes from `offset` to the end of `file` do not form
/// a valid record and nothing valid follows them. A writer that opens the file cuts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Byte offset of the first invalid byte (the end of the last valid record).
    pub offset: u64,
    /// Number of bytes from `offset` to the end of the file.
    pub bytes: u64,
}

/// `fsync`: flushes the file's data and metadata.
pub fn fsync_file(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// `fdatasync`: flushes the file's data and the metadata needed to read it back (its length).
pub fn fdatasync_file(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Advises the kernel that `len` bytes of `file` from `offset` will not be read again soon
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`): their pages, if clean, leave the page cache now
/// instead of when memory runs short. Only for bytes already on stable storage: dirty pages
/// would be written back early rather than dropped. Advice only: the data stays on disk and
/// any later read gets it back. A no-op off Linux and for `len == 0`.
pub fn release_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed)
            .map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Ok(())
    }
}

/// Flushes a directory, making creations, renames and removals of its entries durable.
/// A no-op where directories cannot be opened as files (non-Unix).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Flushes the directory that contains `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) => fsync_dir(p),
        None => Ok(()),
    }
}

/// Creates `dir` and its missing ancestors, then fsyncs the parent of every directory it
/// created, so the new directories survive a crash.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // Remember which ancestors are missing before creating them.
    let mut created: Vec<&Path> = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        created.push(p);
        cur = p.parent();
    }
    fs::create_dir_all(dir)?;
    for p in created.iter().rev() {
        fsync_parent(p)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file `.<name>.tmp` in the same directory is
/// written and fsynced, renamed over `path`, and the directory is fsynced. After a crash `path`
/// holds either its old content or `bytes`. Two concurrent writers of the same `path` are not
/// supported (they share the temporary name).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("atomic_write needs a file path, got {}", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_parent(path)
    })();
    if result.is_err() {
        // Best effort: do not leave the temporary file behind. The original error matters more.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Cuts `file` to `len` bytes and fsyncs the new length.
pub fn truncate_durable(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_all()
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(buf)
    }
}

/// `xxh3-64(len:u32 LE || payload)`.
pub(crate) fn frame_checksum(len: u32, payload: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.digest()
}

/// Appends one frame holding `payload` to `out`. The caller bounds `payload.len()`.
pub(crate) fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame_with(out, payload.len(), |o| o.extend_from_slice(payload));
}

/// Appends one frame whose payload of `payload_len` bytes `write` appends to `out` itself (no
/// copy of a payload built elsewhere); the header is filled in after. The caller bounds
/// `payload_len`.
///
/// # Panics
/// If `write` appends other than exactly `payload_len` bytes; the frame is cut from `out`
/// first, so nothing malformed is left behind.
pub(crate) fn put_frame_with(
    out: &mut Vec<u8>,
    payload_len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let len = u32::try_from(payload_len).expect("frame payload longer than u32::MAX");
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + payload_len);
    out.resize(start + FRAME_HEADER_LEN, 0);
    write(out);
    let written = out.len() - start - FRAME_HEADER_LEN;
    if written != payload_len {
        out.truncate(start);
        panic!("frame payload of {written} bytes where {payload_len} were announced");
    }
    let sum = frame_checksum(len, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

/// Checks that `frame` is exactly one valid frame and returns its payload (read-back check for
/// a record read again by offset).
pub(crate) fn check_frame(frame: &[u8], max: u32) -> Result<&[u8], String> {
    if frame.len() < FRAME_HEADER_LEN {
        return Err(format!(
            "record of {} bytes is shorter than its header",
            frame.len()
        ));
    }
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    let sum = u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes"));
    if len > max || len as usize != frame.len() - FRAME_HEADER_LEN {
        return Err(format!(
            "record length field {len} does not match the {} bytes read",
            frame.len() - FRAME_HEADER_LEN
        ));
    }
    let payload = &frame[FRAME_HEADER_LEN..];
    if frame_checksum(len, payload) != sum {
        return Err("record checksum mismatch".to_owned());
    }
    Ok(payload)
}

/// One step of a [`FrameReader`].
#[derive(Debug)]
pub(crate) enum FrameRead<'a> {
    /// A valid frame starting at `offset`.
    Frame { offset: u64, payload: &'a [u8] },
    /// The end of the data was reached exactly at a frame boundary.
    End,
    /// The frame starting at `offset` is incomplete or fails its checks.
    Bad { offset: u64, reason: String },
}

/// Streams frames from a reader positioned at `offset`, knowing where the data ends (`end`, the
/// file length), so incomplete frames are detected without relying on short reads.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    reader: R,
    offset: u64,
    end: u64,
    max: u32,
    payload: Vec<u8>,
    stopped: bool,
}

impl<R: Read> FrameReader<R> {
    /// `reader` must be positioned at byte `offset` of a file of `end` bytes.
    pub(crate) fn new(reader: R, offset: u64, end: u64, max: u32) -> Self {
        assert!(offset <= end, "frame reader starts past the end");
        FrameReader {
            reader,
            offset,
            end,
            max,
            payload: Vec::new(),
            stopped: false,
        }
    }

    /// Reads the next frame. After `End` or `Bad`, the reader must not be used again.
    pub(crate) fn next_frame(&mut self) -> io::Result<FrameRead<'_>> {
        assert!(!self.stopped, "frame reader used after End or Bad");
        let offset = self.offset;
        let remaining = self.end - offset;
        if remaining == 0 {
            self.stopped = true;
            return Ok(FrameRead::End);
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            self.stopped = true;
            return Ok(FrameRead::Bad {
                offset,
                reason: format!("incomplete record header ({remaining} bytes)"),
            });
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.reader.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let sum = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        if len > self.max {
            self.stopped = true;
            return Ok(FrameRead::Bad {
                offset,
                reason: format!("record length {len} exceeds the maximum {}", self.max),
            });
        }
        if u64::from(len) > remaining - FRAME_HEADER_LEN as u64 {
            self.stopped = true;
            return Ok(FrameRead::Bad {
                offset,
                reason: format!(
                    "incomplete record: {len} bytes announced, {} present",
                    remaining - FRAME_HEADER_LEN as u64
                ),
            });
        }
        self.payload.resize(len as usize, 0);
        self.reader.read_exact(&mut self.payload)?;
        if frame_checksum(len, &self.payload) != sum {
            self.stopped = true;
            return Ok(FrameRead::Bad {
                offset,
                reason: "record checksum mismatch".to_owned(),
            });
        }
        self.offset = offset + FRAME_HEADER_LEN as u64 + u64::from(len);
        debug_assert!(self.offset <= self.end);
        Ok(FrameRead::Frame {
            offset,
            payload: &self.payload,
        })
    }
}

/// What follows a bad frame at the end of a file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TailVerdict {
    /// Nothing valid follows: an interrupted write, safe to cut at the bad frame.
    Torn,
    /// Something that may be acknowledged data follows: must be reported.
    Corrupt(String),
}

/// Decides whether the bytes `[bad_offset, end)` of `file` are a torn tail: true when no valid
/// frame (plausible length, matching checksum) starts at any byte after `bad_offset`.
/// At the first bad record of an append-only log at `offset` (file length `end`): a torn tail
/// (nothing valid follows) is cut, or with `read_only` left in place and returned; anything
/// else is corruption, returned as `Err(reason)` for the caller to report with its location.
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle_bad_record(
    file: &File,
    path: &Path,
    offset: u64,
    end: u64,
    reason: &str,
    record_bytes_max: u32,
    read_only: bool,
    what: &'static str,
) -> io::Result<Result<Option<TornTail>, String>> {
    match classify_tail(file, offset, end, record_bytes_max)? {
        TailVerdict::Torn => {
            tracing::warn!(file = %path.display(), offset, bytes = end - offset, reason = %reason, read_only, "torn tail in {what}");
            if read_only {
                return Ok(Ok(Some(TornTail {
                    file: path.to_owned(),
                    offset,
                    bytes: end - offset,
                })));
            }
            truncate_durable(file, offset)?;
            Ok(Ok(None))
        }
        TailVerdict::Corrupt(why) => Ok(Err(format!("{reason}; {why}"))),
    }
}

pub(crate) fn classify_tail(
    file: &File,
    bad_offset: u64,
    end: u64,
    max: u32,
) -> io::Result<TailVerdict> {
    let from = bad_offset + 1;
    if from + FRAME_HEADER_LEN as u64 > end {
        return Ok(TailVerdict::Torn);
    }
    let n = end - from;
    if n > TAIL_SCAN_BYTES_MAX {
        return Ok(TailVerdict::Corrupt(format!(
            "{} bytes follow the bad record; an interrupted write is never that long",
            n + 1
        )));
    }
    let mut data = vec![0u8; n as usize];
    read_exact_at(file, &mut data, from)?;
    Ok(
        match find_valid_frame(&data, max, TAIL_SCAN_HASH_BYTES_MAX) {
            Scan::NotFound => TailVerdict::Torn,
            Scan::Found(p) => TailVerdict::Corrupt(format!(
                "a valid record follows at byte {}, so this is not an interrupted write",
                from + p as u64
            )),
            Scan::GaveUp(p) => TailVerdict::Corrupt(format!(
                "could not rule out valid records after byte {} (scan work bound reached)",
                from + p as u64
            )),
        },
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    NotFound,
    Found(usize),
    GaveUp(usize),
}

/// Looks for a valid frame starting at any byte of `data`.
fn find_valid_frame(data: &[u8], max: u32, hash_budget: u64) -> Scan {
    if data.len() < FRAME_HEADER_LEN {
        return Scan::NotFound;
    }
    let mut hashed = 0u64;
    for p in 0..=data.len() - FRAME_HEADER_LEN {
        let len = u32::from_le_bytes(data[p..p + 4].try_into().expect("4 bytes"));
        let room = data.len() - p - FRAME_HEADER_LEN;
        if len > max || len as usize > room {
            continue;
        }
        hashed += 4 + u64::from(len);
        if hashed > hash_budget {
            return Scan::GaveUp(p);
        }
        let sum = u64::from_le_bytes(data[p + 4..p + 12].try_into().expect("8 bytes"));
        let payload = &data[p + FRAME_HEADER_LEN..p + FRAME_HEADER_LEN + len as usize];
        if frame_checksum(len, payload) == sum {
            return Scan::Found(p);
        }
    }
    Scan::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            put_frame(&mut out, p);
        }
        out
    }

    #[test]
    fn frame_reader_reads_back_what_put_frame_wrote() {
        let data = frames(&[b"", b"a", b"hello world"]);
        let mut r = FrameReader::new(&data[..], 0, data.len() as u64, 1024);
        let mut got = Vec::new();
        loop {
            match r.next_frame().unwrap() {
                FrameRead::Frame { offset, payload } => got.push((offset, payload.to_vec())),
                FrameRead::End => break,
                FrameRead::Bad { reason, .. } => panic!("{reason}"),
            }
        }
        assert_eq!(
            got,
            vec![
                (0, b"".to_vec()),
                (12, b"a".to_vec()),
                (25, b"hello world".to_vec())
            ]
        );
        assert!(check_frame(&data[12..25], 1024).is_ok());
        assert!(check_frame(&data[12..24], 1024).is_err());
    }

    #[test]
    fn frame_reader_reports_bad_frames_with_their_offset() {
        let mut data = frames(&[b"abc", b"defgh"]);
        data[15 + 12] ^= 1; // a payload byte of the second frame
        let mut r = FrameReader::new(&data[..], 0, data.len() as u64, 1024);
        assert!(matches!(r.next_frame().unwrap(), FrameRead::Frame { .. }));
        match r.next_frame().unwrap() {
            FrameRead::Bad { offset, .. } => assert_eq!(offset, 15),
            other => panic!("expected Bad, got {other:?}"),
        }
        let data = frames(&[b"abc"]);
        let mut r = FrameReader::new(&data[..], 0, data.len() as u64, 2);
        assert!(matches!(
            r.next_frame().unwrap(),
            FrameRead::Bad { offset: 0, .. }
        ));
    }

    #[test]
    fn scan_finds_embedded_frames_and_ignores_zeros() {
        // The empty frame over zero bytes must not checksum to zero, or zero-filled tails would
        // look valid.
        assert_ne!(frame_checksum(0, &[]), 0);
        assert_eq!(
            find_valid_frame(&[0u8; 4096], 1 << 20, u64::MAX),
            Scan::NotFound
        );
        let mut data = vec![7u8; 33];
        data.extend_from_slice(&frames(&[b"xyz"]));
        data.extend_from_slice(&[0u8; 9]);
        assert_eq!(find_valid_frame(&data, 1 << 20, u64::MAX), Scan::Found(33));
        assert!(matches!(
            find_valid_frame(&data, 1 << 20, 3),
            Scan::GaveUp(_)
        ));
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two!");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("manifest.json")]);
    }

    #[test]
    fn create_dir_durable_creates_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/c");
        create_dir_durable(&p).unwrap();
        assert!(p.is_dir());
        create_dir_durable(&p).unwrap();
        fsync_dir(&p).unwrap();
    }
}
