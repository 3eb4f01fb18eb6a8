//! The sealed key store: a directory holding the key database and the audit log.
//!
//! ```text
//! keystore.json  format version, root key kind, Argon2id salt and costs, passphrase verifier
//! keys.db        the key database (KeyDb as JSON), sealed with AES-256-GCM
//! audit.log      hash-chained audit records, one JSON object per line
//! audit.head     the MAC of the newest audit record, so cutting the log's tail is noticed
//! lock           flock(2) target that serializes every change
//! ```
//! Key material inside keys.db is sealed a second time, per version, so a loaded database holds no
//! plaintext key material; a version is unsealed only for the one operation that uses it.

pub mod atomic;
pub mod rootkey;

use crate::cryptocore::{self, SecretKey};
use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::key::KeyRecord;
use chrono::{DateTime, Utc};
use rootkey::{KdfParams, RootKind, RootSecret, StoreKeys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;
use zeroize::Zeroizing;

pub const META_FILE: &str = "keystore.json";
pub const DB_FILE: &str = "keys.db";
pub const AUDIT_FILE: &str = "audit.log";
pub const AUDIT_HEAD_FILE: &str = "audit.head";
pub const LOCK_FILE: &str = "lock";

const META_FORMAT: &str = "kmsfs-keystore";
const META_VERSION: u32 = 1;
const DB_MAGIC: &[u8; 8] = b"KMSFSKDB";
const DB_VERSION: u16 = 1;
/// magic, version, generation
const DB_HEADER_LEN: usize = 8 + 2 + 8;

/// keystore.json: everything needed to derive the root key again. Holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMeta {
    pub format: String,
    pub version: u32,
    pub store_id: Uuid,
    pub created: DateTime<Utc>,
    pub root: RootKind,
    pub kdf: Option<KdfParams>,
    #[serde(with = "crate::encoding::b64")]
    pub salt: Vec<u8>,
    #[serde(with = "crate::encoding::b64")]
    pub verifier: Vec<u8>,
}

/// The content of keys.db.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyDb {
    pub keys: BTreeMap<Uuid, KeyRecord>,
    /// Full alias name (`alias/...`) to key id.
    pub aliases: BTreeMap<String, Uuid>,
    /// Keys whose material was destroyed, with the date, so later requests can say so.
    pub deleted: BTreeMap<Uuid, DateTime<Utc>>,
    /// Cipher directories made or mounted with this store, for `retire-version`'s inventory.
    #[serde(default)]
    pub cipherdirs: std::collections::BTreeSet<PathBuf>,
    #[serde(skip)]
    pub generation: u64,
}

/// Holds the store's flock (and this process's turn at it); dropping it releases both.
pub struct StoreLock<'a> {
    held: std::sync::MutexGuard<'a, Option<LockFile>>,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.held.as_ref() {
            // SAFETY: flock on a descriptor the guard keeps open.
            unsafe { libc::flock(l.file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

/// The lock file, kept open between locks (an open and a close per KMS call cost a mount a
/// tenth of its CPU while files are created), with the identity it had when opened.
struct LockFile {
    file: File,
    dev: u64,
    ino: u64,
}

fn open_lock_file(path: &Path) -> std::io::Result<LockFile> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(atomic::FILE_MODE)
        .open(path)?;
    let m = file.metadata()?;
    Ok(LockFile {
        file,
        dev: m.dev(),
        ino: m.ino(),
    })
}

fn flock_exclusive(file: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The keys.db this process looked at last, held open: while it is open its inode number
/// cannot be reused, so a path whose stat matches it is that very file (no need to read its
/// generation again).
struct Current {
    stamp: DbStamp,
    generation: u64,
    _file: File,
}

/// An unlocked key store.
pub struct KeyStore {
    dir: PathBuf,
    meta: StoreMeta,
    keys: StoreKeys,
    /// The last keys.db this process read or wrote, with the file's identity then: a long-lived
    /// process (a mount) skips reading, decrypting and parsing it while it is unchanged.
    cache: std::sync::Mutex<Option<(DbStamp, Arc<KeyDb>)>>,
    current: std::sync::Mutex<Option<Current>>,
    /// Where this process's last audit append left the log (see `AuditLog::cached`).
    audit_tail: std::sync::Mutex<Option<crate::kms::audit::Tail>>,
    lock_file: std::sync::Mutex<Option<LockFile>>,
    audit_deferred: std::sync::atomic::AtomicBool,
}

/// What identifies one version of keys.db: every save is a rename, so a new inode and times.
type DbStamp = [i64; 7];

fn stamp_of(m: &std::fs::Metadata) -> DbStamp {
    use std::os::unix::fs::MetadataExt;
    [
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

fn read_meta(dir: &Path) -> Result<StoreMeta> {
    let path = dir.join(META_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KmsError::keystore(format!(
                "no key store at {}: create one with `kmsfs keystore init`",
                dir.display()
            )));
        }
        Err(e) => return Err(KmsError::io(path.display(), e)),
    };
    let meta: StoreMeta = serde_json::from_str(&text)
        .map_err(|e| KmsError::keystore(format!("{} is damaged: {e}", path.display())))?;
    if meta.format != META_FORMAT {
        return Err(KmsError::keystore(format!(
            "{} is not a kmsfs key store",
            path.display()
        )));
    }
    if meta.version != META_VERSION {
        return Err(KmsError::keystore(format!(
            "key store format version {} is not supported (this kmsfs reads version {META_VERSION})",
            meta.version
        )));
    }
    Ok(meta)
}

impl KeyStore {
    /// Reads only keystore.json: enough to tell whether a passphrase is needed.
    pub fn probe(dir: &Path) -> Result<StoreMeta> {
        read_meta(dir)
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(META_FILE).exists()
    }

    /// Creates a new, empty key store in `dir` (created if missing; must not hold a store already).
    pub fn init(
        dir: &Path,
        secret: &RootSecret,
        kdf: KdfParams,
        now: DateTime<Utc>,
    ) -> Result<KeyStore> {
        if Self::exists(dir) {
            return Err(KmsError::new(
                ErrorKind::AlreadyExists,
                format!("{} already holds a key store", dir.display()),
            ));
        }
        atomic::create_private_dir(dir).map_err(|e| KmsError::io(dir.display(), e))?;
        let mut salt = vec![0u8; 16];
        cryptocore::fill_random(&mut salt)
            .map_err(|_| KmsError::internal("the system random source failed"))?;
        let kdf = match secret.kind() {
            RootKind::Passphrase => {
                kdf.validate()?;
                Some(kdf)
            }
            RootKind::KeyFile => None,
        };
        let store_id = Uuid::new_v4();
        let root = rootkey::derive_root_key(secret, &salt, &kdf.unwrap_or_default())?;
        let keys = StoreKeys::derive(&root, store_id.as_bytes());
        let meta = StoreMeta {
            format: META_FORMAT.to_string(),
            version: META_VERSION,
            store_id,
            created: now,
            root: secret.kind(),
            kdf,
            salt,
            verifier: keys.verifier_tag().to_vec(),
        };
        let store = KeyStore {
            dir: dir.to_path_buf(),
            meta,
            keys,
            cache: std::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            audit_tail: std::sync::Mutex::new(None),
            lock_file: std::sync::Mutex::new(None),
            audit_deferred: std::sync::atomic::AtomicBool::new(false),
        };
        {
            let lock = store.lock()?;
            store.save(&lock, &KeyDb::default())?;
            let json = serde_json::to_vec_pretty(&store.meta)
                .map_err(|e| KmsError::internal(format!("encoding keystore.json: {e}")))?;
            // keystore.json last: a crash before it leaves a directory that is not yet a store.
            atomic::write_atomic(&dir.join(META_FILE), &json)
                .map_err(|e| KmsError::io(dir.join(META_FILE).display(), e))?;
        }
        Ok(store)
    }

    /// Opens and unlocks an existing store; a wrong passphrase is WrongPassphraseException.
    pub fn open(dir: &Path, secret: &RootSecret) -> Result<KeyStore> {
        let meta = read_meta(dir)?;
        if meta.root != secret.kind() {
            return Err(KmsError::new(
                ErrorKind::WrongPassphrase,
                match meta.root {
                    RootKind::Passphrase => {
                        "this key store is unlocked by a passphrase, not a root key file"
                    }
                    RootKind::KeyFile => {
                        "this key store is unlocked by a root key file, not a passphrase"
                    }
                },
            ));
        }
        let root = rootkey::derive_root_key(secret, &meta.salt, &meta.kdf.unwrap_or_default())?;
        let keys = StoreKeys::derive(&root, meta.store_id.as_bytes());
        keys.check_verifier(&meta.verifier)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            meta,
            keys,
            cache: std::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            audit_tail: std::sync::Mutex::new(None),
            lock_file: std::sync::Mutex::new(None),
            audit_deferred: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// The audit log, appending where this process left it while no one else wrote to it.
    pub fn audit_log(&self) -> crate::kms::audit::AuditLog<'_> {
        crate::kms::audit::AuditLog::new(&self.dir, self.keys.audit.as_ref())
            .cached(&self.audit_tail)
            .deferred(
                self.audit_deferred
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// From now on this process's audit records are synced by `AuditLog::flush`, not each
    /// before its operation returns (see `AuditLog::deferred`).
    pub fn defer_audit_sync(&self) {
        self.audit_deferred
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes the store's exclusive lock, waiting for other processes (and this process's other
    /// threads) to release it.
    pub fn lock(&self) -> Result<StoreLock<'_>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join(LOCK_FILE);
        let mut held = self.lock_file.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let l = match held.take() {
                Some(l) => l,
                None => open_lock_file(&path).map_err(|e| KmsError::io(path.display(), e))?,
            };
            flock_exclusive(&l.file).map_err(|e| KmsError::io(path.display(), e))?;
            // A `lock` removed or replaced since it was opened no longer excludes the processes
            // that open the new one: drop it (closing unlocks) and lock what the path names now.
            if std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == (l.dev, l.ino)) {
                *held = Some(l);
                return Ok(StoreLock { held });
            }
        }
    }

    /// Changes whenever keys.db is replaced (each save is a rename, so a new inode and times,
    /// and a new generation in its header: the stat alone could repeat if an inode number were
    /// reused with the same size and times).
    pub fn change_stamp(&self) -> u64 {
        self.db_identity().map_or(0, |(s, generation)| {
            s.iter()
                .chain([generation as i64].iter())
                .fold(0u64, |h, v| {
                    (h ^ *v as u64)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .rotate_left(17)
                })
        })
    }

    fn db_aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = header.to_vec();
        aad.extend_from_slice(self.meta.store_id.as_bytes());
        aad
    }

    /// keys.db's stat and generation. One stat while the file is the one seen last (held open,
    /// so a match is that file); a new file is opened, held, and its header read.
    fn db_identity(&self) -> Option<(DbStamp, u64)> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(DB_FILE);
        let seen = stamp_of(&std::fs::metadata(&path).ok()?);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = current.as_ref().filter(|c| c.stamp == seen) {
            return Some((c.stamp, c.generation));
        }
        let file = File::open(&path).ok()?;
        // The file opened may be newer than the one just stat'ed: describe what is held.
        let stamp = stamp_of(&file.metadata().ok()?);
        let mut h = [0u8; DB_HEADER_LEN];
        file.read_exact_at(&mut h, 0).ok()?;
        let mut g = [0u8; 8];
        g.copy_from_slice(&h[10..18]);
        let generation = u64::from_be_bytes(g);
        *current = Some(Current {
            stamp,
            generation,
            _file: file,
        });
        Some((stamp, generation))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<(DbStamp, Arc<KeyDb>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads and authenticates keys.db (or reuses the copy read last, if the file is the same
    /// one). Requires the lock, so a read never sees a half-done change.
    pub fn load(&self, lock: &StoreLock) -> Result<KeyDb> {
        Ok(Arc::unwrap_or_clone(self.load_shared(lock)?))
    }

    /// `load`, sharing the copy kept in memory: no copy is made until the caller changes it
    /// (`Arc::make_mut`). Most operations only read.
    pub fn load_shared(&self, lock: &StoreLock) -> Result<Arc<KeyDb>> {
        let id = self.db_identity();
        if let (Some((s, generation)), Some((cs, db))) = (id, &*self.cache()) {
            // The same inode, size and times, and the generation every save increments.
            if s == *cs && generation == db.generation {
                return Ok(db.clone());
            }
        }
        let db = Arc::new(self.load_file(lock)?);
        match id {
            Some((s, generation)) if generation == db.generation => {
                *self.cache() = Some((s, db.clone()))
            }
            _ => {}
        }
        Ok(db)
    }

    fn load_file(&self, _lock: &StoreLock) -> Result<KeyDb> {
        let path = self.dir.join(DB_FILE);
        let data = std::fs::read(&path).map_err(|e| KmsError::io(path.display(), e))?;
        let damaged = |why: &str| {
            KmsError::keystore(format!(
                "{} is damaged or was modified: {why}",
                path.display()
            ))
        };
        if data.len() < DB_HEADER_LEN + cryptocore::SEAL_OVERHEAD {
            return Err(damaged("too short"));
        }
        let (header, sealed) = data.split_at(DB_HEADER_LEN);
        if &header[..8] != DB_MAGIC {
            return Err(damaged("bad magic"));
        }
        let version = u16::from_be_bytes([header[8], header[9]]);
        if version != DB_VERSION {
            return Err(KmsError::keystore(format!(
                "{}: key database version {version} is not supported",
                path.display()
            )));
        }
        let mut gen_bytes = [0u8; 8];
        gen_bytes.copy_from_slice(&header[10..18]);
        let plain = cryptocore::open(&self.keys.db, &self.db_aad(header), sealed)
            .map_err(|_| damaged("authentication failed"))?;
        let mut db: KeyDb =
            serde_json::from_slice(&plain).map_err(|e| damaged(&format!("bad content: {e}")))?;
        db.generation = u64::from_be_bytes(gen_bytes);
        Ok(db)
    }

    /// Seals and atomically replaces keys.db.
    pub fn save(&self, _lock: &StoreLock, db: &KeyDb) -> Result<()> {
        let mut header = Vec::with_capacity(DB_HEADER_LEN);
        header.extend_from_slice(DB_MAGIC);
        header.extend_from_slice(&DB_VERSION.to_be_bytes());
        header.extend_from_slice(&(db.generation + 1).to_be_bytes());
        let plain = Zeroizing::new(
            serde_json::to_vec(db)
                .map_err(|e| KmsError::internal(format!("encoding key database: {e}")))?,
        );
        let sealed = cryptocore::seal(&self.keys.db, &self.db_aad(&header), &plain)
            .map_err(|_| KmsError::internal("the system random source failed"))?;
        header.extend_from_slice(&sealed);
        let path = self.dir.join(DB_FILE);
        *self.cache() = None;
        atomic::write_atomic(&path, &header).map_err(|e| KmsError::io(path.display(), e))?;
        match self.db_identity() {
            Some((s, generation)) if generation == db.generation + 1 => {
                let mut saved = db.clone();
                saved.generation = generation;
                *self.cache() = Some((s, Arc::new(saved)));
            }
            _ => {}
        }
        Ok(())
    }

    fn material_aad(key_id: &Uuid, version: u32) -> Vec<u8> {
        let mut aad = b"kmsfs key material v1".to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    /// Seals one version of key material, bound to its key id and version number.
    pub fn seal_material(&self, key_id: &Uuid, version: u32, material: &[u8]) -> Result<Vec<u8>> {
        cryptocore::seal(
            &self.keys.material,
            &Self::material_aad(key_id, version),
            material,
        )
        .map_err(|_| KmsError::internal("the system random source failed"))
    }

    /// Unseals material of any length (PKCS#8 key pairs, HMAC keys).
    pub fn unseal_secret(
        &self,
        key_id: &Uuid,
        version: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        cryptocore::open(
            &self.keys.material,
            &Self::material_aad(key_id, version),
            sealed,
        )
        .map_err(|_| {
            KmsError::keystore(format!(
                "sealed material of key {key_id} version {version} failed authentication"
            ))
        })
    }

    fn token_aad(key_id: &Uuid) -> Vec<u8> {
        let mut aad = b"kmsfs import token v1".to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad
    }

    /// Seals an import token (a wrapping private key) so only this store opens it, for this key.
    pub fn seal_import_token(&self, key_id: &Uuid, token: &[u8]) -> Result<Vec<u8>> {
        cryptocore::seal(&self.keys.material, &Self::token_aad(key_id), token)
            .map_err(|_| KmsError::internal("the system random source failed"))
    }

    pub fn unseal_import_token(&self, key_id: &Uuid, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        cryptocore::open(&self.keys.material, &Self::token_aad(key_id), sealed).map_err(|_| {
            KmsError::invalid_ciphertext(format!(
                "the import token is not one this key store issued for key {key_id}"
            ))
        })
    }

    /// Unseals 256-bit symmetric material.
    pub fn unseal_material(&self, key_id: &Uuid, version: u32, sealed: &[u8]) -> Result<SecretKey> {
        let plain = self.unseal_secret(key_id, version, sealed)?;
        let mut key = Zeroizing::new([0u8; cryptocore::KEY_LEN]);
        if plain.len() != key.len() {
            return Err(KmsError::keystore(format!(
                "key {key_id} version {version}: material has the wrong length"
            )));
        }
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rootkey::MIN_MEMORY_KIB;

    fn fast() -> KdfParams {
        KdfParams {
            memory_kib: MIN_MEMORY_KIB,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn pw(s: &str) -> RootSecret {
        RootSecret::passphrase(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn init_open_and_wrong_passphrase() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ks");
        KeyStore::init(&dir, &pw("right"), fast(), Utc::now()).unwrap();
        assert!(KeyStore::open(&dir, &pw("right")).is_ok());
        let e = KeyStore::open(&dir, &pw("wrong")).err().unwrap();
        assert_eq!(e.kind, ErrorKind::WrongPassphrase);
        let e = KeyStore::init(&dir, &pw("right"), fast(), Utc::now())
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
    }

    /// Whether another open file description of `path` could take the flock now.
    fn free(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        // SAFETY: flock on a descriptor owned here.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[test]
    fn the_kept_lock_file_excludes_others_only_while_held_and_follows_a_replacement() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ks");
        let store = KeyStore::init(&dir, &pw("pw"), fast(), Utc::now()).unwrap();
        let path = dir.join(LOCK_FILE);
        {
            let _l = store.lock().unwrap();
            assert!(!free(&path), "held");
        }
        assert!(
            free(&path),
            "released on drop, though the descriptor stays open"
        );
        // Another process replaces the lock file: the next lock must take the new one's flock.
        std::fs::remove_file(&path).unwrap();
        File::create(&path).unwrap();
        {
            let _l = store.lock().unwrap();
            assert!(!free(&path), "the file the path names now is held");
        }
        assert!(free(&path));
        // And a removed one is made again.
        std::fs::remove_file(&path).unwrap();
        let _l = store.lock().unwrap();
        assert!(!free(&path));
    }

    #[test]
    fn db_round_trip_and_tamper_detection() {
        let d = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(d.path(), &pw("p"), fast(), Utc::now()).unwrap();
        let lock = ks.lock().unwrap();
        let mut db = ks.load(&lock).unwrap();
        db.aliases.insert("alias/x".into(), Uuid::nil());
        ks.save(&lock, &db).unwrap();
        let back = ks.load(&lock).unwrap();
        assert_eq!(back.aliases.len(), 1);
        assert_eq!(back.generation, db.generation + 1);
        let path = d.path().join(DB_FILE);
        let good = std::fs::read(&path).unwrap();
        for i in [0, 9, 12, DB_HEADER_LEN + 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(
                ks.load(&lock).unwrap_err().kind,
                ErrorKind::KeyStore,
                "flip at {i}"
            );
        }
    }

    #[test]
    fn every_save_by_another_instance_is_seen_at_once() {
        let d = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(d.path(), &pw("p"), fast(), Utc::now()).unwrap();
        let other = KeyStore::open(d.path(), &pw("p")).unwrap();
        let mut seen = ks.change_stamp();
        // Same-sized databases saved back to back, likely within one timestamp tick: only the
        // inode (never reused while held) and the generation tell them apart.
        for i in 0..20 {
            let name = format!("alias/{}", i % 2);
            {
                let lock = other.lock().unwrap();
                let mut db = other.load(&lock).unwrap();
                db.aliases.clear();
                db.aliases.insert(name.clone(), Uuid::nil());
                other.save(&lock, &db).unwrap();
            }
            let now = ks.change_stamp();
            assert_ne!(now, seen, "save {i} unnoticed");
            seen = now;
            let lock = ks.lock().unwrap();
            let db = ks.load(&lock).unwrap();
            assert_eq!(db.aliases.keys().collect::<Vec<_>>(), vec![&name]);
        }
    }

    #[test]
    fn material_is_bound_to_key_and_version() {
        let d = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(d.path(), &pw("p"), fast(), Utc::now()).unwrap();
        let m = cryptocore::random_key().unwrap();
        let id = Uuid::new_v4();
        let s = ks.seal_material(&id, 1, &m[..]).unwrap();
        assert_eq!(*ks.unseal_material(&id, 1, &s).unwrap(), *m);
        assert!(ks.unseal_material(&id, 2, &s).is_err());
        assert!(ks.unseal_material(&Uuid::new_v4(), 1, &s).is_err());
    }
}
