//! A segmented write-ahead log: one per shard, payloads are opaque bytes.
//!
//! # Format (version 1)
//! A WAL is a directory of segment files named `{id:020}.wal` (zero-padded decimal), ids
//! consecutive. Each segment is
//! ```text
//! segment := header frame*
//! header  := magic "ANNALWAL" | version:u32 = 1 | segment_id:u64          (20 bytes)
//! frame   := len:u32 | checksum:u64 | payload (len bytes)
//!            checksum = xxh3-64(len bytes || payload)
//! ```
//! all integers little-endian; `len <= frame_bytes_max`.
//!
//! # Invariants
//! - Only the last segment can end in a torn tail. [`Wal`] fsyncs a segment before it creates the
//!   next one, and never writes to a segment other than the current one.
//! - [`replay`] cuts a torn tail of the last segment: an incomplete frame or a checksum mismatch
//!   after which no valid frame starts at any later byte. The file is truncated at the end of the
//!   last valid frame and fsynced. If a valid frame follows a bad one, or a bad frame is in an
//!   earlier segment, or a header is wrong, or an id is missing, replay fails with
//!   [`WalError::Corrupt`]: an acknowledged frame may be damaged, and the operator decides.
//!   A last segment shorter than its header (a crash while creating it) holds no frame and is
//!   removed.
//! - [`Wal::open`] never appends to an existing segment: it starts segment `max + 1`, so a
//!   segment that replay accepted is never modified afterwards.
//! - A frame is durable once [`Wal::sync`] returns: one `fdatasync` covers every frame appended
//!   before it (group commit). Frames appended but not synced are lost on a crash or on drop.
//! - Once synced, a segment's pages leave the page cache ([`fsutil::release_cached`]), all
//!   but the page the next write extends: the WAL is read only by replay, and a log that keeps
//!   what it wrote cached makes every write land on a page the kernel must first allocate
//!   (docs/PERFORMANCE.md, "The WAL's page cache"). Skipped with `no_sync`, whose pages are
//!   still dirty.
//! - After any I/O error in append, sync or rotation the handle is poisoned: every later call
//!   returns [`WalError::Poisoned`] with the original message; reopen to recover.
//! - Segments are removed oldest first ([`Wal::remove_segments_before`]) so the remaining ids
//!   stay consecutive even if removal stops half-way.
//!
//! # Bounds
//! `frame_bytes_max` (default 64 MiB) per payload; `segment_bytes_max` (default 128 MiB) per
//! segment, exceeded only by a single frame larger than it; `buffer_bytes_max` (default 4 MiB)
//! of appended frames are held in memory before they are written (not synced) to the file.
//! Replay holds one frame in memory at a time, plus, only when it meets a bad frame in the last
//! segment, the rest of that segment to decide whether it is a torn tail (at most
//! [`crate::fsutil::TAIL_SCAN_BYTES_MAX`]; a longer rest is reported as corruption).
//!
//! A torn tail is told apart from damage by scanning every later byte for a valid frame. A
//! crash that persisted a later page of the last group commit but not an earlier one therefore
//! looks like damage and is reported, not cut: replay never drops a frame that verifies.
//!
//! One `Wal` per directory: nothing here locks the directory; the caller (the engine's node
//! lock) must guarantee a single writer.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::fsutil::{self, classify_tail, FrameRead, FrameReader, TailVerdict, FRAME_HEADER_LEN};

/// Segment header magic.
pub const WAL_MAGIC: [u8; 8] = *b"ANNALWAL";
/// Segment format version written and read by this build.
pub const WAL_VERSION: u32 = 1;
/// Bytes in a segment header.
pub const SEGMENT_HEADER_LEN: usize = 8 + 4 + 8;

/// Default maximum payload of one frame.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 64 << 20;
/// Default segment size at which the WAL rotates.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 128 << 20;
/// Default amount of appended frames buffered in memory before a (non-synced) write.
pub const BUFFER_BYTES_MAX_DEFAULT: usize = 4 << 20;

const READ_BUFFER_BYTES: usize = 1 << 20;

/// Synced bytes are released from the page cache in whole pages of this size. The kernel drops
/// only pages wholly inside the range, so a larger page size is safe: its partial page stays.
const RELEASE_PAGE_BYTES: u64 = 4096;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL I/O error while {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "WAL segment {segment} is corrupt at byte {offset}: {reason}. The WAL cannot be replayed \
         past this point; restore the segment from a backup, or, if every block it covers is \
         known to be sealed, move it aside and restart"
    )]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("WAL frame of {len} bytes exceeds frame_bytes_max ({max}); split the payload")]
    FrameTooLarge { len: usize, max: u32 },
    #[error("WAL is unusable after an earlier I/O failure ({0}); reopen it (restart the shard)")]
    Poisoned(String),
    #[error(
        "WAL replay callback failed on the frame at byte {offset} of segment {segment}: {source}"
    )]
    Callback {
        segment: u64,
        offset: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// WAL configuration. Replay must use the same `frame_bytes_max` as the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// A segment is closed and a new one started before a frame would make it exceed this.
    pub segment_bytes_max: u64,
    /// Largest payload accepted by [`Wal::append`] and by replay.
    pub frame_bytes_max: u32,
    /// Appended frames are written (without fsync) once this many bytes are buffered.
    pub buffer_bytes_max: usize,
    /// Skip every `fdatasync`/`fsync` (files and directory). **Risk:** a power loss or kernel
    /// crash can lose frames that [`Wal::sync`] reported as written, and can leave damage that
    /// replay reports as corruption instead of a torn tail. A process crash alone loses nothing
    /// that `sync` wrote. Only for benchmarks and writes the client marked `no_sync`.
    pub no_sync: bool,
    /// Replay only: never cut a torn tail or remove a torn segment, just report it in
    /// [`ReplayStats::torn_bytes_cut`] (what a cut would remove). For audits of a live node.
    pub read_only: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            no_sync: false,
            read_only: false,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<(), WalError> {
        let min_segment = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64;
        if self.segment_bytes_max < min_segment {
            return Err(WalError::Config(format!(
                "segment_bytes_max = {} is below the minimum {min_segment}",
                self.segment_bytes_max
            )));
        }
        if self.frame_bytes_max == 0 {
            return Err(WalError::Config(
                "frame_bytes_max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Segments read (including a removed torn one).
    pub segments: u64,
    /// Frames passed to the callback.
    pub frames: u64,
    /// Payload bytes passed to the callback.
    pub payload_bytes: u64,
    /// Bytes cut from the end of the last segment (torn tail), 0 if none.
    pub torn_bytes_cut: u64,
    /// Id of the first and last segment remaining after replay, if any.
    pub first_segment: Option<u64>,
    pub last_segment: Option<u64>,
}

/// The file name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment ids present in `dir` with their sizes, sorted by id. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, u64)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(io_err("reading metadata of", &entry.path()))?
            .len();
        out.push((id, len));
    }
    out.sort_unstable();
    Ok(out)
}

fn encode_header(id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&WAL_MAGIC);
    h[8..12].copy_from_slice(&WAL_VERSION.to_le_bytes());
    h[12..].copy_from_slice(&id.to_le_bytes());
    h
}

fn check_header(h: &[u8; SEGMENT_HEADER_LEN], id: u64) -> Result<(), String> {
    if h[..8] != WAL_MAGIC {
        return Err("bad magic: not an annals WAL segment".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != WAL_VERSION {
        return Err(format!(
            "unsupported WAL version {version} (this build reads {WAL_VERSION})"
        ));
    }
    let stored = u64::from_le_bytes(h[12..].try_into().expect("8 bytes"));
    if stored != id {
        return Err(format!(
            "header names segment {stored}, file name says {id}"
        ));
    }
    Ok(())
}

/// Replays every segment of `dir` in id order with the default configuration.
/// See [`replay_with`].
pub fn replay<E>(
    dir: &Path,
    f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<ReplayStats, WalError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    replay_with(dir, &WalConfig::default(), f)
}

/// Streams every frame of every segment of `dir`, in order, to `f(segment_id, payload)`, cutting
/// a torn tail of the last segment (see the module doc). An error from `f` stops the replay and
/// is returned as [`WalError::Callback`]. Frames are passed as they are read: when replay fails
/// with `Corrupt`, `f` has already seen the frames before the damage.
pub fn replay_with<E>(
    dir: &Path,
    cfg: &WalConfig,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<ReplayStats, WalError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    cfg.validate()?;
    let segments = list_segments(dir)?;
    let mut stats = ReplayStats::default();
    for w in segments.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(WalError::Corrupt {
                segment: w[0].0 + 1,
                offset: 0,
                reason: format!(
                    "segment file is missing between segments {} and {}",
                    w[0].0, w[1].0
                ),
            });
        }
    }
    let mut remaining: Vec<u64> = Vec::with_capacity(segments.len());
    for (i, &(id, _)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let path = dir.join(segment_file_name(id));
        stats.segments += 1;
        let file = OpenOptions::new()
            .read(true)
            .write(last && !cfg.read_only)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let len = file
            .metadata()
            .map_err(io_err("reading metadata of", &path))?
            .len();
        let corrupt = |offset: u64, reason: String| WalError::Corrupt {
            segment: id,
            offset,
            reason,
        };
        // Header.
        if len < SEGMENT_HEADER_LEN as u64 {
            if !last {
                return Err(corrupt(0, format!("segment is only {len} bytes long")));
            }
            // A crash while creating the segment: it holds no frame.
            tracing::warn!(
                segment = id,
                bytes = len,
                "removing WAL segment with a torn header"
            );
            drop(file);
            if !cfg.read_only {
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                if !cfg.no_sync {
                    fsutil::fsync_dir(dir).map_err(io_err("syncing directory", dir))?;
                }
            }
            stats.torn_bytes_cut += len;
            break;
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, &file);
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        reader
            .read_exact(&mut header)
            .map_err(io_err("reading", &path))?;
        if let Err(reason) = check_header(&header, id) {
            let zeroed = header.iter().all(|&b| b == 0);
            if last
                && zeroed
                && classify_tail(&file, 0, len, cfg.frame_bytes_max)
                    .map_err(io_err("reading", &path))?
                    == TailVerdict::Torn
            {
                // Created and extended, but its header never reached the disk (no_sync or a
                // file system that exposes unwritten extents as zeros): it holds no frame.
                tracing::warn!(
                    segment = id,
                    bytes = len,
                    "removing zero-filled WAL segment"
                );
                drop(reader);
                drop(file);
                if !cfg.read_only {
                    fs::remove_file(&path).map_err(io_err("removing", &path))?;
                    if !cfg.no_sync {
                        fsutil::fsync_dir(dir).map_err(io_err("syncing directory", dir))?;
                    }
                }
                stats.torn_bytes_cut += len;
                break;
            }
            return Err(corrupt(0, reason));
        }
        remaining.push(id);
        // Frames.
        let mut frames =
            FrameReader::new(reader, SEGMENT_HEADER_LEN as u64, len, cfg.frame_bytes_max);
        loop {
            match frames.next_frame().map_err(io_err("reading", &path))? {
                FrameRead::Frame { offset, payload } => {
                    stats.frames += 1;
                    stats.payload_bytes += payload.len() as u64;
                    f(id, payload).map_err(|e| WalError::Callback {
                        segment: id,
                        offset,
                        source: e.into(),
                    })?;
                }
                FrameRead::End => break,
                FrameRead::Bad { offset, reason } => {
                    if !last {
                        return Err(corrupt(
                            offset,
                            format!("{reason} in a segment that is not the last"),
                        ));
                    }
                    match classify_tail(&file, offset, len, cfg.frame_bytes_max)
                        .map_err(io_err("reading", &path))?
                    {
                        TailVerdict::Torn => {
                            tracing::warn!(
                                segment = id,
                                offset,
                                bytes = len - offset,
                                reason = %reason,
                                "cutting torn WAL tail"
                            );
                            if cfg.read_only {
                                Ok(())
                            } else if cfg.no_sync {
                                file.set_len(offset)
                            } else {
                                fsutil::truncate_durable(&file, offset)
                            }
                            .map_err(io_err("truncating", &path))?;
                            stats.torn_bytes_cut += len - offset;
                            break;
                        }
                        TailVerdict::Corrupt(why) => {
                            return Err(corrupt(offset, format!("{reason}; {why}")))
                        }
                    }
                }
            }
        }
    }
    stats.first_segment = remaining.first().copied();
    stats.last_segment = remaining.last().copied();
    Ok(stats)
}

/// The writing end of a WAL. See the module doc for the format and invariants.
pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    /// The current segment, positioned nowhere in particular: writes are positional.
    file: File,
    current: u64,
    /// Bytes written to the current segment file (header included).
    written: u64,
    /// Bytes of the current segment known to be on stable storage.
    synced: u64,
    /// Bytes of the current segment, from its start, whose cached pages were released.
    released: u64,
    /// Frames appended but not yet written.
    buf: Vec<u8>,
    /// Closed segments: id -> size.
    closed: BTreeMap<u64, u64>,
    poisoned: Option<String>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("current", &self.current)
            .field("written", &self.written)
            .field("buffered", &self.buf.len())
            .field("closed_segments", &self.closed.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Wal {
    /// Replays `dir` (validating every frame and cutting a torn tail, payloads are discarded),
    /// then starts a new segment. Use [`Wal::open_with`] to receive the payloads in the same pass.
    pub fn open(dir: &Path, cfg: WalConfig) -> Result<Wal, WalError> {
        Ok(Wal::open_with(dir, cfg, |_, _| Ok::<(), WalError>(()))?.0)
    }

    /// Creates `dir` if needed, replays it into `f` (see [`replay_with`]), then starts segment
    /// `max existing id + 1` (0 for an empty directory) and fsyncs the directory.
    pub fn open_with<E>(
        dir: &Path,
        cfg: WalConfig,
        f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(Wal, ReplayStats), WalError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        cfg.validate()?;
        fsutil::create_dir_durable(dir).map_err(io_err("creating", dir))?;
        let stats = replay_with(dir, &cfg, f)?;
        let closed: BTreeMap<u64, u64> = list_segments(dir)?.into_iter().collect();
        debug_assert_eq!(closed.keys().next_back().copied(), stats.last_segment);
        let id = match stats.last_segment {
            Some(last) => last.checked_add(1).ok_or_else(|| WalError::Corrupt {
                segment: last,
                offset: 0,
                reason: "segment id space exhausted".into(),
            })?,
            None => 0,
        };
        let file = create_segment(dir, id, &cfg)?;
        let wal = Wal {
            dir: dir.to_owned(),
            cfg,
            file,
            current: id,
            written: SEGMENT_HEADER_LEN as u64,
            synced: SEGMENT_HEADER_LEN as u64,
            released: 0,
            buf: Vec::new(),
            closed,
            poisoned: None,
        };
        Ok((wal, stats))
    }

    /// Buffers one frame holding `payload`. Cheap: a copy, except that it writes the buffer when
    /// it exceeds `buffer_bytes_max` and rotates when the segment is full. Not durable until
    /// [`Wal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        self.append_with(payload.len(), |buf| buf.extend_from_slice(payload))
    }

    /// [`Wal::append`] of a payload of `payload_len` bytes that `write` appends straight to the
    /// WAL's buffer, so a large record is not first built elsewhere and then copied.
    ///
    /// # Panics
    /// If `write` appends other than exactly `payload_len` bytes (the frame is dropped from the
    /// buffer first, so nothing malformed is ever written).
    pub fn append_with(
        &mut self,
        payload_len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), WalError> {
        self.check_poisoned()?;
        if payload_len > self.cfg.frame_bytes_max as usize {
            return Err(WalError::FrameTooLarge {
                len: payload_len,
                max: self.cfg.frame_bytes_max,
            });
        }
        let frame_len = (FRAME_HEADER_LEN + payload_len) as u64;
        let segment_len = self.written + self.buf.len() as u64;
        if segment_len > SEGMENT_HEADER_LEN as u64
            && segment_len + frame_len > self.cfg.segment_bytes_max
        {
            let r = self.rotate();
            self.poison_on_err(r)?;
        }
        let before = self.buf.len();
        fsutil::put_frame_with(&mut self.buf, payload_len, write);
        debug_assert_eq!((self.buf.len() - before) as u64, frame_len);
        if self.buf.len() >= self.cfg.buffer_bytes_max {
            let r = self.write_buffer();
            self.poison_on_err(r)?;
        }
        Ok(())
    }

    /// Writes every appended frame and `fdatasync`s the segment (skipped with `no_sync`). When it
    /// returns `Ok`, every frame appended before the call is durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        let r = self.sync_inner();
        self.poison_on_err(r)
    }

    /// Syncs the current segment and starts a new one, so every earlier segment can be removed
    /// once what it holds is durable elsewhere (the engine does this at shutdown, leaving an
    /// empty WAL for the next start to replay).
    pub fn rotate_now(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        let r = self.rotate();
        self.poison_on_err(r)
    }

    /// Id of the segment frames are appended to.
    pub fn current_segment(&self) -> u64 {
        self.current
    }

    /// Deletes every segment with an id smaller than `id` (never the current one), oldest first,
    /// then fsyncs the directory. Returns how many were removed.
    pub fn remove_segments_before(&mut self, id: u64) -> Result<usize, WalError> {
        self.check_poisoned()?;
        let doomed: Vec<u64> = self
            .closed
            .range(..id.min(self.current))
            .map(|(&k, _)| k)
            .collect();
        for &seg in &doomed {
            debug_assert_ne!(seg, self.current);
            let path = self.dir.join(segment_file_name(seg));
            // Oldest first: if this fails, the remaining ids are still consecutive.
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            self.closed.remove(&seg);
        }
        if !doomed.is_empty() && !self.cfg.no_sync {
            fsutil::fsync_dir(&self.dir).map_err(io_err("syncing directory", &self.dir))?;
        }
        Ok(doomed.len())
    }

    /// Bytes of all segments written to their files (buffered frames excluded).
    pub fn bytes_on_disk(&self) -> u64 {
        self.closed.values().sum::<u64>() + self.written
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of all segments, oldest first, the current one last.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.closed
            .keys()
            .copied()
            .chain(std::iter::once(self.current))
            .collect()
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(msg) => Err(WalError::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    fn poison_on_err<T>(&mut self, r: Result<T, WalError>) -> Result<T, WalError> {
        if let Err(e) = &r {
            tracing::error!(dir = %self.dir.display(), error = %e, "WAL poisoned");
            self.poisoned = Some(e.to_string());
        }
        r
    }

    fn segment_path(&self) -> PathBuf {
        self.dir.join(segment_file_name(self.current))
    }

    fn write_buffer(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.segment_path();
        fsutil::write_all_at(&self.file, &self.buf, self.written)
            .map_err(io_err("writing", &path))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        debug_assert_eq!(
            self.file.metadata().map(|m| m.len()).ok(),
            Some(self.written),
            "WAL segment length disagrees with bytes written"
        );
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<(), WalError> {
        self.write_buffer()?;
        if self.synced < self.written {
            if !self.cfg.no_sync {
                let path = self.segment_path();
                fsutil::fdatasync_file(&self.file).map_err(io_err("syncing", &path))?;
                self.release_written();
            }
            self.synced = self.written;
        }
        assert!(self.buf.is_empty() && self.synced == self.written);
        Ok(())
    }

    /// Releases the cached pages of the current segment's written bytes, which the caller has
    /// just synced, up to the page that holds the last of them: the next write extends that
    /// page, which, released, would first have to be read back. Advice only: a failure is
    /// logged and changes nothing else.
    fn release_written(&mut self) {
        let upto = self.written / RELEASE_PAGE_BYTES * RELEASE_PAGE_BYTES;
        if upto <= self.released {
            return;
        }
        if let Err(e) = fsutil::release_cached(&self.file, self.released, upto - self.released) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "could not release WAL pages");
        }
        self.released = upto;
    }

    /// Closes the current segment (written and synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync_inner()?;
        let next = self.current + 1;
        let file = create_segment(&self.dir, next, &self.cfg)?;
        self.closed.insert(self.current, self.written);
        tracing::debug!(
            dir = %self.dir.display(),
            closed = self.current,
            bytes = self.written,
            "rotated WAL segment"
        );
        self.file = file;
        self.current = next;
        self.written = SEGMENT_HEADER_LEN as u64;
        self.synced = SEGMENT_HEADER_LEN as u64;
        self.released = 0;
        Ok(())
    }
}

/// Creates segment `id` with its header, fsyncs it and the directory (unless `no_sync`).
fn create_segment(dir: &Path, id: u64, cfg: &WalConfig) -> Result<File, WalError> {
    let path = dir.join(segment_file_name(id));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    let header = encode_header(id);
    fsutil::write_all_at(&file, &header, 0).map_err(io_err("writing header of", &path))?;
    if !cfg.no_sync {
        fsutil::fdatasync_file(&file).map_err(io_err("syncing", &path))?;
        fsutil::fsync_dir(dir).map_err(io_err("syncing directory", dir))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cfg() -> WalConfig {
        WalConfig {
            segment_bytes_max: 1024,
            frame_bytes_max: 4096,
            buffer_bytes_max: 300,
            no_sync: false,
            read_only: false,
        }
    }

    fn payload(i: usize) -> Vec<u8> {
        (0..(i * 7) % 150).map(|j| (i * 31 + j) as u8).collect()
    }

    /// `(segment id, payload)` in replay order.
    type Frames = Vec<(u64, Vec<u8>)>;

    fn collect(dir: &Path, cfg: &WalConfig) -> Result<(Frames, ReplayStats), WalError> {
        let mut out = Vec::new();
        let stats = replay_with(dir, cfg, |seg, p| {
            out.push((seg, p.to_vec()));
            Ok::<(), WalError>(())
        })?;
        Ok((out, stats))
    }

    fn payloads(v: &[(u64, Vec<u8>)]) -> Vec<Vec<u8>> {
        v.iter().map(|(_, p)| p.clone()).collect()
    }

    /// Writes `n` frames in one fresh WAL and closes it; returns the frames.
    fn write_frames(dir: &Path, cfg: &WalConfig, n: usize) -> Vec<Vec<u8>> {
        let mut wal = Wal::open(dir, cfg.clone()).unwrap();
        let frames: Vec<Vec<u8>> = (0..n).map(payload).collect();
        for (i, p) in frames.iter().enumerate() {
            wal.append(p).unwrap();
            if i % 13 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        frames
    }

    fn copy_dir(from: &Path, to: &Path) {
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    #[test]
    fn round_trip_across_rotations_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let mut expected = write_frames(dir.path(), &cfg, 500);
        let (got, stats) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(payloads(&got), expected);
        assert!(stats.segments > 10, "expected rotations, got {stats:?}");
        assert_eq!(stats.torn_bytes_cut, 0);
        // Every segment respects the size bound and segment ids in callbacks never go back.
        for (_, len) in list_segments(dir.path()).unwrap() {
            assert!(len <= cfg.segment_bytes_max);
        }
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));

        // Reopen: a new segment after the last, and old frames are still replayed first.
        let (mut wal, stats2) =
            Wal::open_with(dir.path(), cfg.clone(), |_, _| Ok::<(), WalError>(())).unwrap();
        assert_eq!(wal.current_segment(), stats2.last_segment.unwrap() + 1);
        wal.append(b"after reopen").unwrap();
        wal.sync().unwrap();
        expected.push(b"after reopen".to_vec());
        let (got, _) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(payloads(&got), expected);
        assert_eq!(got.last().unwrap().0, wal.current_segment());
        assert_eq!(
            wal.bytes_on_disk(),
            list_segments(dir.path())
                .unwrap()
                .iter()
                .map(|s| s.1)
                .sum::<u64>()
        );
    }

    #[test]
    fn large_frame_gets_its_own_segment_and_oversized_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let mut wal = Wal::open(dir.path(), cfg.clone()).unwrap();
        wal.append(b"small").unwrap();
        let big = vec![9u8; 2000];
        wal.append(&big).unwrap();
        let err = wal.append(&vec![0u8; 4097]).unwrap_err();
        assert!(matches!(
            err,
            WalError::FrameTooLarge {
                len: 4097,
                max: 4096
            }
        ));
        // A refused frame does not poison.
        wal.append(b"tail").unwrap();
        wal.sync().unwrap();
        let (got, _) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(
            payloads(&got),
            vec![b"small".to_vec(), big, b"tail".to_vec()]
        );
        let segs: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(segs, vec![0, 1, 2]);
    }

    #[test]
    fn append_with_writes_the_frames_append_writes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = small_cfg();
        let (mut by_copy, mut in_place) = (
            Wal::open(a.path(), cfg.clone()).unwrap(),
            Wal::open(b.path(), cfg.clone()).unwrap(),
        );
        for i in 0..200 {
            let p = payload(i);
            by_copy.append(&p).unwrap();
            in_place
                .append_with(p.len(), |buf| {
                    // In two pieces, as a record encoder writes its header and then its rows.
                    let (x, y) = p.split_at(p.len() / 3);
                    buf.extend_from_slice(x);
                    buf.extend_from_slice(y);
                })
                .unwrap();
        }
        let err = in_place.append_with(4097, |_| unreachable!()).unwrap_err();
        assert!(matches!(err, WalError::FrameTooLarge { len: 4097, .. }));
        by_copy.sync().unwrap();
        in_place.sync().unwrap();
        let segments = |d: &Path| -> Vec<Vec<u8>> {
            list_segments(d)
                .unwrap()
                .iter()
                .map(|(id, _)| std::fs::read(d.join(segment_file_name(*id))).unwrap())
                .collect()
        };
        assert_eq!(segments(a.path()), segments(b.path()));
        assert_eq!(
            payloads(&collect(b.path(), &cfg).unwrap().0),
            (0..200).map(payload).collect::<Vec<_>>()
        );
    }

    #[test]
    fn append_with_a_wrong_length_panics_and_leaves_no_frame() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let mut wal = Wal::open(dir.path(), cfg.clone()).unwrap();
        wal.append(b"before").unwrap();
        let short = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wal.append_with(10, |buf| buf.extend_from_slice(b"seven!!"))
        }));
        assert!(short.is_err());
        wal.append(b"after").unwrap();
        wal.sync().unwrap();
        let (got, stats) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(payloads(&got), vec![b"before".to_vec(), b"after".to_vec()]);
        assert_eq!(stats.torn_bytes_cut, 0);
    }

    #[test]
    fn truncation_or_bit_flip_anywhere_in_last_frame_recovers_preceding_frames() {
        let base = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            segment_bytes_max: 1 << 20,
            ..small_cfg()
        };
        let mut frames = write_frames(base.path(), &cfg, 40);
        let last_payload = frames.pop().unwrap();
        assert!(!last_payload.is_empty());
        let seg = list_segments(base.path()).unwrap();
        assert_eq!(seg.len(), 1);
        let path = base.path().join(segment_file_name(seg[0].0));
        let full = fs::read(&path).unwrap();
        let start = full.len() - FRAME_HEADER_LEN - last_payload.len();

        for cut in start..full.len() {
            for flip in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                copy_dir(base.path(), dir.path());
                let p = dir.path().join(segment_file_name(0));
                let mut bytes = full.clone();
                if flip {
                    bytes[cut] ^= 0x40;
                } else {
                    bytes.truncate(cut);
                }
                fs::write(&p, &bytes).unwrap();
                let (got, stats) = collect(dir.path(), &cfg).unwrap();
                assert_eq!(payloads(&got), frames, "cut {cut} flip {flip}");
                assert_eq!(stats.torn_bytes_cut, (bytes.len() - start) as u64);
                assert_eq!(fs::metadata(&p).unwrap().len(), start as u64);
                // Appends work after recovery and the recovered prefix is intact.
                let mut wal = Wal::open(dir.path(), cfg.clone()).unwrap();
                wal.append(b"next").unwrap();
                wal.sync().unwrap();
                let (got, stats) = collect(dir.path(), &cfg).unwrap();
                assert_eq!(stats.torn_bytes_cut, 0);
                assert_eq!(got.len(), frames.len() + 1);
                assert_eq!(got.last().unwrap(), &(1, b"next".to_vec()));
            }
        }
    }

    #[test]
    fn flipped_byte_in_a_middle_segment_is_reported_with_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        write_frames(dir.path(), &cfg, 200);
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 4);
        let victim = segs[2].0;
        let path = dir.path().join(segment_file_name(victim));
        let mut bytes = fs::read(&path).unwrap();
        // Find the frame containing byte 300 by walking the frames.
        let mut off = SEGMENT_HEADER_LEN;
        let target = 300;
        loop {
            let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            if off + FRAME_HEADER_LEN + len > target {
                break;
            }
            off += FRAME_HEADER_LEN + len;
        }
        bytes[target] ^= 1;
        fs::write(&path, &bytes).unwrap();
        match collect(dir.path(), &cfg) {
            Err(WalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, victim);
                assert_eq!(offset, off as u64);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Opening must refuse too, and must not have modified anything.
        assert!(matches!(
            Wal::open(dir.path(), cfg.clone()),
            Err(WalError::Corrupt { segment, .. }) if segment == victim
        ));
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn bad_header_missing_segment_and_valid_frame_after_damage_are_corrupt() {
        let cfg = small_cfg();
        let base = tempfile::tempdir().unwrap();
        write_frames(base.path(), &cfg, 200);
        let segs = list_segments(base.path()).unwrap();
        let last = segs.last().unwrap().0;

        // Bad magic in the first segment.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let p = dir.path().join(segment_file_name(0));
        let mut b = fs::read(&p).unwrap();
        b[0] = b'X';
        fs::write(&p, &b).unwrap();
        assert!(matches!(
            collect(dir.path(), &cfg),
            Err(WalError::Corrupt {
                segment: 0,
                offset: 0,
                ..
            })
        ));

        // A gap in ids.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        fs::remove_file(dir.path().join(segment_file_name(3))).unwrap();
        assert!(matches!(
            collect(dir.path(), &cfg),
            Err(WalError::Corrupt { segment: 3, .. })
        ));

        // A missing last segment is not detectable as a gap; the others still replay.
        assert!(last >= 3);

        // Damage in the first frame of the last segment, later frames intact: not a torn tail.
        let dir = tempfile::tempdir().unwrap();
        write_frames(dir.path(), &WalConfig::default(), 10);
        let p = dir.path().join(segment_file_name(0));
        let mut b = fs::read(&p).unwrap();
        b[SEGMENT_HEADER_LEN + 4] ^= 0xff; // checksum of the first frame
        fs::write(&p, &b).unwrap();
        assert!(matches!(
            collect(dir.path(), &cfg),
            Err(WalError::Corrupt { segment: 0, offset, .. }) if offset == SEGMENT_HEADER_LEN as u64
        ));
        assert_eq!(fs::read(&p).unwrap(), b, "corrupt file was modified");
    }

    #[test]
    fn torn_segment_header_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let frames = write_frames(dir.path(), &cfg, 10);
        // Simulate a crash while creating segment 1.
        fs::write(
            dir.path().join(segment_file_name(1)),
            &encode_header(1)[..7],
        )
        .unwrap();
        let (got, stats) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(payloads(&got), frames);
        assert_eq!(stats.torn_bytes_cut, 7);
        assert_eq!(stats.last_segment, Some(0));
        let wal = Wal::open(dir.path(), cfg).unwrap();
        assert_eq!(wal.current_segment(), 1);
    }

    #[test]
    fn callback_errors_propagate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        write_frames(dir.path(), &cfg, 10);
        let mut seen = 0;
        let err = replay_with(dir.path(), &cfg, |_, _| {
            seen += 1;
            if seen == 3 {
                Err("engine refused frame")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        match err {
            WalError::Callback {
                segment: 0, source, ..
            } => {
                assert_eq!(source.to_string(), "engine refused frame")
            }
            other => panic!("expected Callback, got {other:?}"),
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn io_failure_poisons_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let mut wal = Wal::open(dir.path(), cfg).unwrap();
        wal.append(b"durable").unwrap();
        wal.sync().unwrap();
        // Swap the segment handle for a read-only one: the next write fails with EBADF, as a
        // full or failing disk would fail it.
        wal.file = File::open(wal.segment_path()).unwrap();
        wal.append(b"lost").unwrap();
        let first = wal.sync().unwrap_err();
        assert!(
            matches!(first, WalError::Io { op: "writing", .. }),
            "{first:?}"
        );
        for err in [
            wal.append(b"x").unwrap_err(),
            wal.sync().unwrap_err(),
            wal.remove_segments_before(10).unwrap_err(),
        ] {
            match err {
                WalError::Poisoned(msg) => assert_eq!(msg, first.to_string()),
                other => panic!("expected Poisoned, got {other:?}"),
            }
        }
        drop(wal);
        // Reopening recovers what was synced.
        let (got, _) = collect(dir.path(), &small_cfg()).unwrap();
        assert_eq!(payloads(&got), vec![b"durable".to_vec()]);
    }

    #[test]
    fn remove_segments_before_keeps_newer_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let mut wal = Wal::open(dir.path(), cfg.clone()).unwrap();
        let mut seg_of = Vec::new();
        for i in 0..200 {
            wal.append(&payload(i)).unwrap();
            seg_of.push(wal.current_segment());
        }
        wal.sync().unwrap();
        let current = wal.current_segment();
        assert!(current >= 5);
        assert_eq!(wal.remove_segments_before(3).unwrap(), 3);
        assert_eq!(wal.remove_segments_before(3).unwrap(), 0);
        assert_eq!(wal.segment_ids()[0], 3);
        let (got, stats) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(stats.first_segment, Some(3));
        let expected: Vec<Vec<u8>> = (0..200).filter(|&i| seg_of[i] >= 3).map(payload).collect();
        assert_eq!(payloads(&got), expected);
        // Never the current segment, even when asked for everything.
        let n = wal.remove_segments_before(u64::MAX).unwrap();
        assert_eq!(n as u64, current - 3);
        assert_eq!(wal.segment_ids(), vec![current]);
        assert!(dir.path().join(segment_file_name(current)).exists());
        wal.append(b"still works").unwrap();
        wal.sync().unwrap();
        assert_eq!(
            wal.bytes_on_disk(),
            list_segments(dir.path())
                .unwrap()
                .iter()
                .map(|s| s.1)
                .sum::<u64>()
        );
    }

    #[test]
    fn no_sync_still_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig {
            no_sync: true,
            ..small_cfg()
        };
        let frames = write_frames(dir.path(), &cfg, 100);
        let (got, _) = collect(dir.path(), &cfg).unwrap();
        assert_eq!(payloads(&got), frames);
    }

    #[test]
    fn segment_names_parse_strictly() {
        assert_eq!(parse_segment_name(&segment_file_name(42)), Some(42));
        assert_eq!(
            parse_segment_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.wal.tmp"), None);
        assert_eq!(parse_segment_name("99999999999999999999.wal"), None);
    }
}
