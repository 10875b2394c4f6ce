//! Content hashes (blake3) of raw and reference files, with a stat shortcut: a file whose size,
//! modification and change times, inode and device match the last hashing is not read again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What a file looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    bytes: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
    /// When it was hashed (ns since the epoch).
    hashed_ns: i128,
    hash: String,
}

// A file modified within this long before it was hashed may change again without a visible
// change of its times (file systems with coarse timestamps): it is hashed again next time.
const SETTLE_NS: i128 = 2_000_000_000;

/// How [`FileHashes`] reads a file it has to hash.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// In 64 KiB pieces, none kept.
    Stream,
    /// Whole, and the bytes are given back.
    Keep,
    /// Mapped into memory and hashed on every core: only for a file that cannot change
    /// while it is read ([`FileHashes::hash_executable`]).
    MapOnEveryCore,
}

/// Hashes files, remembering stamps in `out/cache/file_hashes.json`.
#[derive(Debug)]
pub struct FileHashes {
    path: PathBuf,
    known: BTreeMap<String, Stamp>,
    seen: Mutex<BTreeMap<String, Stamp>>,
    trust_stamps: bool,
    read_files: AtomicU64,
    read_bytes: AtomicU64,
}

#[cfg(unix)]
fn stamp_of(meta: &std::fs::Metadata) -> (i128, i128, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        meta.ino(),
        meta.dev(),
    )
}

#[cfg(not(unix))]
fn stamp_of(_meta: &std::fs::Metadata) -> (i128, i128, u64, u64) {
    // Without inode and change time the shortcut is not safe: every file is hashed.
    (0, 0, 0, 0)
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl FileHashes {
    /// Loads the stamps kept in `cache_dir`; `trust_stamps: false` hashes every file.
    pub fn load(cache_dir: &Path, trust_stamps: bool) -> FileHashes {
        let path = cache_dir.join("file_hashes.json");
        let known = std::fs::read(&path)
            .ok()
            .and_then(|b| crate::cache::from_sealed_json(&b).ok())
            .unwrap_or_default();
        FileHashes {
            path,
            known,
            seen: Mutex::new(BTreeMap::new()),
            trust_stamps: trust_stamps && cfg!(unix),
            read_files: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        }
    }

    /// Size and blake3 of a file; read only when its stamp changed.
    pub fn hash(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let (bytes, hash, _) = self.hash_with(path, Read::Stream)?;
        Ok((bytes, hash))
    }

    /// [`FileHashes::hash`], and the file's bytes when it had to be read: a caller about to
    /// parse the file then reads it once, not once to hash it and again to parse it.
    pub fn hash_keeping(&self, path: &Path) -> std::io::Result<(u64, String, Option<Vec<u8>>)> {
        self.hash_with(path, Read::Keep)
    }

    /// [`FileHashes::hash`] for the running executable, `path`, where it has no [`build_id`]:
    /// when it has to be read (a run into a new folder), it is mapped into memory and hashed on
    /// every core, while the stages wait for their cache keys. A running executable cannot be
    /// written to (the system refuses), so its mapping cannot change under the hash, as a raw
    /// file's could: raw files are read, never mapped.
    pub fn hash_executable(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let (bytes, hash, _) = self.hash_with(path, Read::MapOnEveryCore)?;
        Ok((bytes, hash))
    }

    fn hash_with(
        &self,
        path: &Path,
        read: Read,
    ) -> std::io::Result<(u64, String, Option<Vec<u8>>)> {
        let key = std::path::absolute(path)?.to_string_lossy().into_owned();
        let meta = std::fs::metadata(path)?;
        let (mtime_ns, ctime_ns, inode, device) = stamp_of(&meta);
        let same_file = |s: &Stamp| {
            s.bytes == meta.len()
                && s.mtime_ns == mtime_ns
                && s.ctime_ns == ctime_ns
                && s.inode == inode
                && s.device == device
        };
        // Hashed earlier in this run and untouched since: not read twice.
        if let Some(s) = self.seen.lock().ok().and_then(|m| m.get(&key).cloned())
            && cfg!(unix)
            && same_file(&s)
        {
            return Ok((s.bytes, s.hash, None));
        }
        if self.trust_stamps
            && let Some(s) = self.known.get(&key)
            && same_file(s)
            && s.hashed_ns - mtime_ns.max(ctime_ns) >= SETTLE_NS
        {
            self.remember(key, s.clone());
            return Ok((s.bytes, s.hash.clone(), None));
        }
        let hashed_ns = now_ns();
        let (bytes, hash, kept) = match read {
            Read::Keep => {
                let content = std::fs::read(path)?;
                let hash = blake3::hash(&content).to_hex().to_string();
                (content.len() as u64, hash, Some(content))
            }
            Read::Stream => {
                let mut hasher = blake3::Hasher::new();
                // 64 KiB reads (`update_reader`), not `io::copy`'s 8 KiB: wider SIMD batches.
                hasher.update_reader(std::fs::File::open(path)?)?;
                (hasher.count(), hasher.finalize().to_hex().to_string(), None)
            }
            Read::MapOnEveryCore => {
                let mut hasher = blake3::Hasher::new();
                hasher.update_mmap_rayon(path)?;
                (hasher.count(), hasher.finalize().to_hex().to_string(), None)
            }
        };
        self.read_files.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        // The stamp is of the file before reading; a change while reading shows next time.
        let stamp = Stamp {
            bytes,
            mtime_ns,
            ctime_ns,
            inode,
            device,
            hashed_ns,
            hash: hash.clone(),
        };
        if bytes == meta.len() {
            self.remember(key, stamp);
        }
        Ok((bytes, hash, kept))
    }

    fn remember(&self, key: String, stamp: Stamp) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, stamp);
        }
    }

    /// Files read and hashed so far, and their bytes (the rest were known by their stamp).
    pub fn read(&self) -> (u64, u64) {
        (
            self.read_files.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
        )
    }

    /// Keeps the stamps of the files hashed in this run (and only those).
    pub fn save(&self) -> std::io::Result<()> {
        let seen = self
            .seen
            .lock()
            .map_err(|_| std::io::Error::other("poisoned file hash table"))?;
        let json = crate::cache::sealed_json(&*seen).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::cache::write_file(&self.path, &json)
    }
}

/// The GNU build ID of the ELF executable at `path` (the linker's hash of what it linked, in
/// lowercase hex), read from its headers and notes without reading the rest of the file; `None`
/// where the file is not a 64-bit ELF file or has no such ID of at least 16 bytes. It names
/// the build as the file's own hash does, for the cache keys of a run into a new folder, where
/// hashing the 171 MB executable cost 0.2 CPU s (a tenth of a second of every such run).
pub fn build_id(path: &Path) -> Option<String> {
    use object::Object;
    let cache = object::ReadCache::new(std::fs::File::open(path).ok()?);
    let elf = object::read::elf::ElfFile64::<object::Endianness, _>::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    (id.len() >= 16).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_settled_file_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.csv");
        std::fs::write(&f, b"x,y\n1,2\n").unwrap();
        let first = FileHashes::load(dir.path(), true);
        let (n, h) = first.hash(&f).unwrap();
        assert_eq!(
            (n, h.as_str()),
            (8, blake3::hash(b"x,y\n1,2\n").to_hex().as_str())
        );
        assert_eq!(first.read(), (1, 8));
        // Pretend the hashing happened long after the last change.
        {
            let mut seen = first.seen.lock().unwrap();
            for s in seen.values_mut() {
                s.hashed_ns += 10 * SETTLE_NS;
            }
        }
        first.save().unwrap();
        let second = FileHashes::load(dir.path(), true);
        assert_eq!(second.hash(&f).unwrap().1, h);
        assert_eq!(second.read(), (0, 0));
        // Same size, new content: the times (and so the stamp) differ.
        std::fs::write(&f, b"x,y\n1,3\n").unwrap();
        let third = FileHashes::load(dir.path(), true);
        assert_ne!(third.hash(&f).unwrap().1, h);
        assert_eq!(third.read(), (1, 8));
    }

    #[test]
    fn a_just_written_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.csv");
        std::fs::write(&f, b"1").unwrap();
        let first = FileHashes::load(dir.path(), true);
        first.hash(&f).unwrap();
        first.save().unwrap();
        let second = FileHashes::load(dir.path(), true);
        second.hash(&f).unwrap();
        assert_eq!(second.read(), (1, 1));
    }

    #[test]
    fn a_file_read_to_be_hashed_can_be_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.csv");
        std::fs::write(&f, b"x,y\n1,2\n").unwrap();
        let hashes = FileHashes::load(dir.path(), true);
        let (n, h, bytes) = hashes.hash_keeping(&f).unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"x,y\n1,2\n"[..]));
        assert_eq!(
            (n, h.as_str()),
            (8, blake3::hash(b"x,y\n1,2\n").to_hex().as_str())
        );
        // Known in this run: not read again, so no bytes; the same hash as `hash` gives.
        let (_, again, bytes) = hashes.hash_keeping(&f).unwrap();
        assert_eq!((again.as_str(), bytes), (h.as_str(), None));
        assert_eq!(hashes.hash(&f).unwrap().1, h);
        assert_eq!(hashes.read(), (1, 8));
    }

    #[test]
    fn an_executable_is_named_by_its_build_id_and_other_files_have_none() {
        // The test binary is linked as studyflow is: on Linux the C toolchain's linker, which
        // writes a GNU build ID (a 20-byte hash).
        let exe = std::env::current_exe().unwrap();
        if cfg!(target_os = "linux") {
            let id = build_id(&exe).expect("the test executable has a build ID");
            assert_eq!(id.len(), 40);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(build_id(&exe), Some(id));
        }
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("export.csv");
        std::fs::write(&text, "subject_id,date\nA1,2020-01-01\n").unwrap();
        assert_eq!(build_id(&text), None);
        // An ELF header cut short is not read past its end.
        let cut = dir.path().join("cut");
        let mut head = [0u8; 40];
        std::io::Read::read_exact(&mut std::fs::File::open(&exe).unwrap(), &mut head).unwrap();
        std::fs::write(&cut, head).unwrap();
        assert_eq!(build_id(&cut), None);
        assert_eq!(build_id(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_executable_hashed_on_every_core_has_the_streamed_hash() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than blake3's threshold for mapping (16 KiB), and not a whole number of
        // its chunks, so the pieces hashed apart must be joined right.
        let content: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = dir.path().join("studyflow");
        std::fs::write(&f, &content).unwrap();
        let expected = blake3::hash(&content).to_hex().to_string();
        let mapped = FileHashes::load(dir.path(), true);
        assert_eq!(
            mapped.hash_executable(&f).unwrap(),
            (content.len() as u64, expected.clone())
        );
        // Remembered like any file: the stamp serves a later run.
        assert_eq!(mapped.read(), (1, content.len() as u64));
        let streamed = FileHashes::load(dir.path(), true);
        assert_eq!(streamed.hash(&f).unwrap(), (content.len() as u64, expected));
    }
}
