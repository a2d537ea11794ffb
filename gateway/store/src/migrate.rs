//! The store's format version, and the one-time migration of older stores.
//!
//! `store_meta` key `format` holds the format of the whole store (codec version 1, a `u32`).
//! Format 1 (no key: every release before patient protection) kept patient references in
//! clear in index keys and values; format 2 keeps them as keyed hashes and sealed values (see
//! the `protect` module). Format 3 adds the spool segments (see the `segment` module): small
//! envelopes in append-only segment files, located by the tree `spool_segments`. A format-2
//! store is upgraded in place by recording format 3: its envelopes stay in their spool files,
//! which are still read (an envelope without a segment entry is read from its file); the
//! number changes so that a release before segments refuses the store instead of missing the
//! envelopes it cannot see. A store of an unknown format is refused.
//!
//! # Migration from format 1
//! sled is log-structured: rewriting a value in place leaves its old bytes in the log until a
//! segment happens to be reclaimed, so a store migrated in place would still hold the clear
//! references it was meant to remove. The migration therefore copies the store into a new
//! database and swaps the directories:
//!
//! 1. `sled.migrating` is built from the old `sled`: every tree rewritten or copied in
//!    batches, then flushed and fsynced (files and directories) like a commit.
//! 2. `sled.migrating` is renamed `sled.migrated`: from here on the new database is complete.
//! 3. `sled` is renamed `sled.pre-migration`, `sled.migrated` renamed `sled`, and
//!    `sled.pre-migration` removed; each step is followed by an fsync of the store directory.
//!
//! Every open first finishes or undoes an interrupted migration from what is on disk: a
//! `sled.migrating` is incomplete and removed (the migration starts over), a `sled.migrated`
//! is complete and installed (steps 3), a `sled.pre-migration` is removed. So a crash at any
//! point leaves either the old store, to be migrated again, or the new one; never a mix.
//! The migration takes about as long as reading and writing the whole store once, and as much
//! free disk space while it runs.
//!
//! What is rewritten: outbox entries, consent directives, pull requests and records are
//! sealed (records re-keyed by the patient's tag); the patient and consent indexes are rebuilt
//! from the entries; inbox entries, time and retention indexes and store metadata are copied
//! as they are (they hold no patient reference).
//!
//! # The audit chain
//! A format-2 entry hashes its sealed patient reference, so every entry's hash changes and the
//! chain is recomputed. The migration first checks the old chain as `audit_verify` would
//! (seqs, links, hashes, the head record) and refuses to migrate a broken one, since
//! recomputing it would hide the damage: the node does not start until an operator restores
//! the log. It then replays the entries, unchanged but for the sealing, as seqs `1..=n` of a
//! new chain, and appends one entry of event `store-migrated` whose reason records the
//! format change, `n`, and the old head's seq and hash, so anyone holding the old head (a
//! backup, an exported anchor) can tie the new chain to it.

use std::path::Path;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, Transactional};

use crate::audit::{split_stored, Tail, HEAD_KEY};
use crate::audited::Chained;
use crate::codec::{decode, decode_body, encode, encode_sealed};
use crate::collections::{CONSENTS, RECORDS, REQUESTS};
use crate::commit::{sync_dir, SledFiles};
use crate::error::StoreError;
use crate::merkle::Frontier;
use crate::protect::{IfMissing, Keys};
use crate::spool::SpoolDirs;
use crate::tx_err;
use crate::types::{AuditRecord, OutboxEntry};

/// The format this release writes and reads.
pub(crate) const FORMAT: u32 = 3;

/// The format before spool segments, upgraded in place.
const PRE_SEGMENTS_FORMAT: u32 = 2;

/// The format of a store without a `format` key.
const LEGACY_FORMAT: u32 = 1;

pub(crate) const FORMAT_KEY: &[u8] = b"format";

/// The live database, the one being built, the complete new one, and the replaced one.
pub(crate) const LIVE: &str = "sled";
pub(crate) const MIGRATING: &str = "sled.migrating";
pub(crate) const MIGRATED: &str = "sled.migrated";
pub(crate) const PREVIOUS: &str = "sled.pre-migration";

/// The event of the audit entry a migration appends.
pub const STORE_MIGRATED_EVENT: &str = "store-migrated";

/// The chain hash of format 1, kept to check the old chain before replacing it.
const HASH_DOMAIN_V1: &[u8] = b"healthfed/audit/1";

/// Entries per write batch of the new database (tiny in tests, so theirs cross boundaries).
const BATCH: usize = if cfg!(test) { 7 } else { 10_000 };

/// Trees copied as they are: they hold no patient reference.
const COPIED: [&str; 9] = [
    "outbox_by_time",
    "outbox_due",
    "inbox",
    "inbox_by_time",
    "spool_retained",
    "spool_removed",
    "spool_unlink",
    "store_meta",
    "__sled__default",
];

/// Trees of format 1 rewritten by the migration (the indexes are rebuilt, not copied).
const REWRITTEN: [&str; 10] = [
    "outbox",
    "audit",
    "audit_by_patient",
    "audit_by_transfer",
    "audit_break_glass",
    "audit_head",
    "consents",
    "consents_by_patient",
    "requests",
    "records",
];

/// Brings the database opened from `dir/sled` to [`FORMAT`], migrating it if it is older,
/// and returns it (reopened after a migration) with the store's keys.
pub(crate) fn up_to_date(
    dir: &Path,
    db: sled::Db,
    open: impl Fn(&Path) -> Result<sled::Db, StoreError>,
    spool: &Arc<SpoolDirs>,
) -> Result<(sled::Db, Keys), StoreError> {
    let meta = db
        .open_tree("store_meta")
        .map_err(StoreError::sled("open tree"))?;
    match format(&meta)? {
        Some(FORMAT) => Ok((db, Keys::load(dir, IfMissing::Refuse)?)),
        Some(PRE_SEGMENTS_FORMAT) => {
            let keys = Keys::load(dir, IfMissing::Refuse)?;
            // Durable with the store's first commit, which the open performs; a crash before
            // it only upgrades again.
            meta.insert(FORMAT_KEY, encode("store format", &FORMAT)?)
                .map_err(StoreError::sled("write store metadata"))?;
            tracing::info!(
                from = PRE_SEGMENTS_FORMAT,
                to = FORMAT,
                "store format upgraded: small envelopes now go to spool segments"
            );
            Ok((db, keys))
        }
        Some(found) => Err(StoreError::UnsupportedFormat {
            found,
            supported: FORMAT,
        }),
        None if !holds_data(&db)? => {
            // A new store (or an old one never written to): nothing to migrate. Durable with
            // the store's first commit, which the open performs.
            let keys = Keys::load(dir, IfMissing::Create)?;
            meta.insert(FORMAT_KEY, encode("store format", &FORMAT)?)
                .map_err(StoreError::sled("write store metadata"))?;
            Ok((db, keys))
        }
        None => {
            let keys = Keys::load(dir, IfMissing::Create)?;
            tracing::info!(from = LEGACY_FORMAT, to = FORMAT, "migrating the store");
            let report = build(&db, &dir.join(MIGRATING), &open, &keys, spool)?;
            drop(meta);
            drop(db);
            install(dir)?;
            tracing::info!(
                audit_entries = report.audit_entries,
                "store migrated; the audit chain was recomputed (see its store-migrated entry)"
            );
            let db = open(&dir.join(LIVE))?;
            let meta = db
                .open_tree("store_meta")
                .map_err(StoreError::sled("open tree"))?;
            match format(&meta)? {
                Some(FORMAT) => Ok((db, keys)),
                _ => Err(refused("the migrated store does not record its format")),
            }
        }
    }
}

/// The format recorded in `store_meta`, `None` for a store that records none.
fn format(meta: &sled::Tree) -> Result<Option<u32>, StoreError> {
    meta.get(FORMAT_KEY)
        .map_err(StoreError::sled("read store metadata"))?
        .map(|v| decode("store format", &v))
        .transpose()
}

/// Whether any tree other than `store_meta` holds anything.
fn holds_data(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if name.as_ref() == b"store_meta" {
            continue;
        }
        let tree = db.open_tree(&name).map_err(StoreError::sled("open tree"))?;
        if !tree.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn refused(reason: impl Into<String>) -> StoreError {
    StoreError::MigrationRefused {
        from: LEGACY_FORMAT,
        reason: reason.into(),
    }
}

/// Finishes or undoes an interrupted migration (see the module docs). Runs before the live
/// database is opened.
pub(crate) fn recover(dir: &Path) -> Result<(), StoreError> {
    let [live, migrating, migrated, previous] =
        [LIVE, MIGRATING, MIGRATED, PREVIOUS].map(|name| dir.join(name));
    if exists(&migrating)? {
        remove_dir(dir, &migrating)?;
    }
    if exists(&migrated)? {
        if exists(&live)? {
            if exists(&previous)? {
                remove_dir(dir, &previous)?;
            }
            rename(dir, &live, &previous)?;
        }
        rename(dir, &migrated, &live)?;
    }
    if exists(&previous)? {
        remove_dir(dir, &previous)?;
    }
    Ok(())
}

/// Marks the built database complete and swaps it in.
pub(crate) fn install(dir: &Path) -> Result<(), StoreError> {
    rename(dir, &dir.join(MIGRATING), &dir.join(MIGRATED))?;
    recover(dir)
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    path.try_exists()
        .map_err(|e| StoreError::io("check for", path, e))
}

fn remove_dir(dir: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(path).map_err(|e| StoreError::io("remove", path, e))?;
    sync_dir(dir)
}

fn rename(dir: &Path, from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| StoreError::io("rename", from, e))?;
    sync_dir(dir)
}

/// What a migration did.
pub(crate) struct Report {
    /// Audit entries replayed (the `store-migrated` entry not counted).
    pub(crate) audit_entries: u64,
}

/// Writes the format-2 copy of `old` into `new_dir` and makes it durable. On failure the
/// partial copy is removed (the next open would remove it too) and `old` is left as it was.
pub(crate) fn build(
    old: &sled::Db,
    new_dir: &Path,
    open: &impl Fn(&Path) -> Result<sled::Db, StoreError>,
    keys: &Keys,
    spool: &Arc<SpoolDirs>,
) -> Result<Report, StoreError> {
    let built = build_into(old, new_dir, open, keys, spool);
    if built.is_err() && exists(new_dir).unwrap_or(false) {
        // The copy's database was closed when `build_into` returned.
        if let Err(e) = std::fs::remove_dir_all(new_dir) {
            tracing::warn!(error = %e, "could not remove the partial migrated store");
        }
    }
    built
}

fn build_into(
    old: &sled::Db,
    new_dir: &Path,
    open: &impl Fn(&Path) -> Result<sled::Db, StoreError>,
    keys: &Keys,
    spool: &Arc<SpoolDirs>,
) -> Result<Report, StoreError> {
    for name in old.tree_names() {
        let known = std::str::from_utf8(&name)
            .ok()
            .is_some_and(|n| COPIED.contains(&n) || REWRITTEN.contains(&n));
        if !known {
            return Err(refused(
                "the store holds a tree this release does not know; it may hold patient data",
            ));
        }
    }
    let new = open(new_dir)?;
    let tree =
        |db: &sled::Db, name: &str| db.open_tree(name).map_err(StoreError::sled("open tree"));
    for name in COPIED {
        let (from, to) = (tree(old, name)?, tree(&new, name)?);
        rewrite(&from, &to, |key, value, batch| {
            batch.insert(key, value);
            Ok(())
        })?;
    }
    tree(&new, "store_meta")?
        .insert(FORMAT_KEY, encode("store format", &FORMAT)?)
        .map_err(StoreError::sled("write store metadata"))?;
    reseal::<OutboxEntry>(
        &tree(old, "outbox")?,
        &tree(&new, "outbox")?,
        "outbox",
        keys,
    )?;
    reseal::<Vec<u8>>(
        &tree(old, REQUESTS)?,
        &tree(&new, REQUESTS)?,
        REQUESTS,
        keys,
    )?;
    rewrite(
        &tree(old, RECORDS)?,
        &tree(&new, RECORDS)?,
        |key, value, batch| {
            let bytes: Vec<u8> = decode("record", value)?;
            let tag = keys.tag(utf8("record", key)?);
            batch.insert(&tag[..], encode_sealed(keys, (RECORDS, &tag), &bytes)?);
            Ok(())
        },
    )?;
    // Each directive adds its index key to a second batch, applied with the first.
    let index = tree(&new, "consents_by_patient")?;
    let mut index_batch = sled::Batch::default();
    rewrite(
        &tree(old, CONSENTS)?,
        &tree(&new, CONSENTS)?,
        |key, value, batch| {
            let (patient, bytes): (String, Vec<u8>) = decode("consent", value)?;
            batch.insert(
                key,
                encode_sealed(keys, (CONSENTS, key), &(&patient, &bytes))?,
            );
            let mut index_key = keys.tag(&patient).to_vec();
            index_key.extend_from_slice(key);
            index_batch.insert(index_key, &[][..]);
            Ok(())
        },
    )?;
    index
        .apply_batch(index_batch)
        .map_err(StoreError::sled("write migrated store"))?;
    let audit_entries = replay_audit(old, &new, keys)?;
    drop(index);
    // The same durability as a commit: sled's flush, then fdatasync and directory fsyncs.
    let mut files = SledFiles::open(new, new_dir, Arc::clone(spool))?;
    files.sync()?;
    Ok(Report { audit_entries })
}

fn utf8<'a>(what: &'static str, key: &'a [u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(key).map_err(|_| StoreError::Corrupt {
        what,
        problem: "key is not UTF-8",
    })
}

/// Writes `f`'s output for every item of `from` into `to`, a bounded batch at a time. The
/// closure sees the key, the value and the batch to insert into.
/// A tree whose values are sealed in place, under the same keys: each old value is decoded
/// as `T` (so a corrupt one stops the migration) and stored sealed.
fn reseal<T: serde::de::DeserializeOwned + serde::Serialize>(
    from: &sled::Tree,
    to: &sled::Tree,
    name: &'static str,
    keys: &Keys,
) -> Result<(), StoreError> {
    rewrite(from, to, |key, value, batch| {
        let value: T = decode(name, value)?;
        batch.insert(key, encode_sealed(keys, (name, key), &value)?);
        Ok(())
    })
}

fn rewrite(
    from: &sled::Tree,
    to: &sled::Tree,
    mut f: impl FnMut(&[u8], &[u8], &mut sled::Batch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    for item in from.iter() {
        let (key, value) = item.map_err(StoreError::sled("read store to migrate"))?;
        f(&key, &value, &mut batch)?;
        pending += 1;
        if pending >= BATCH {
            to.apply_batch(std::mem::take(&mut batch))
                .map_err(StoreError::sled("write migrated store"))?;
            pending = 0;
        }
    }
    to.apply_batch(batch)
        .map_err(StoreError::sled("write migrated store"))
}

/// Checks the format-1 audit chain of `old` and replays it into `new` (see the module docs);
/// returns the number of entries replayed.
fn replay_audit(old: &sled::Db, new: &sled::Db, keys: &Keys) -> Result<u64, StoreError> {
    let tree =
        |db: &sled::Db, name: &str| db.open_tree(name).map_err(StoreError::sled("open tree"));
    let old_audit = tree(old, "audit")?;
    let old_head = tree(old, "audit_head")?
        .get(HEAD_KEY)
        .map_err(StoreError::sled("read audit head"))?
        .map(|v| decode::<(u64, [u8; 32])>("audit head", &v))
        .transpose()
        .map_err(|_| refused("the audit head record is undecodable"))?;
    let targets = [
        tree(new, "audit")?,
        tree(new, "audit_by_patient")?,
        tree(new, "audit_by_transfer")?,
        tree(new, "audit_break_glass")?,
        tree(new, "audit_head")?,
        tree(new, "audit_tree")?,
    ];
    let mut tail = Tail {
        last_seq: 0,
        hash: [0; 32],
        frontier: Frontier::default(),
    };
    let mut pending = Vec::new();
    let (mut expected, mut old_hash) = (1u64, [0u8; 32]);
    let broken = |seq: u64, problem: &str| {
        refused(format!(
            "the audit chain does not verify (seq {seq}: {problem}); recomputing it would \
             hide that: restore the audit log from a backup"
        ))
    };
    for item in old_audit.iter() {
        let (key, value) = item.map_err(StoreError::sled("read store to migrate"))?;
        let seq = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| broken(expected, "malformed key"))?;
        if seq != expected {
            return Err(broken(expected, "entry missing"));
        }
        let (prev, hash, body) =
            split_stored(&value).ok_or_else(|| broken(seq, "entry undecodable"))?;
        if *prev != old_hash {
            return Err(broken(seq, "prev_hash does not match previous entry"));
        }
        if chain_hash_v1(prev, body) != *hash {
            return Err(broken(seq, "hash does not match contents"));
        }
        let (body_seq, record): (u64, AuditRecord) =
            decode_body("audit", body).map_err(|_| broken(seq, "entry undecodable"))?;
        if body_seq != seq {
            return Err(broken(seq, "entry seq differs from its key"));
        }
        pending.push(record);
        old_hash = *hash;
        expected += 1;
        if pending.len() >= BATCH {
            append(&targets, &mut tail, keys, std::mem::take(&mut pending))?;
        }
    }
    let count = expected - 1;
    match old_head {
        Some((seq, hash)) if seq == count && hash == old_hash => {}
        Some(_) => return Err(broken(count, "head record does not match last entry")),
        None if count > 0 => return Err(broken(count, "head record missing")),
        None => {}
    }
    pending.push(AuditRecord {
        time_ms: 0,
        event: STORE_MIGRATED_EVENT.to_owned(),
        transfer_id: None,
        peer: None,
        patient_ref: None,
        purpose: None,
        clinician: None,
        outcome: "ok".to_owned(),
        reason: Some(format!(
            "store format {LEGACY_FORMAT} -> {FORMAT}: patient references sealed; {count} \
             audit entries re-hashed as seqs 1..={count}; old head seq {count} hash {}",
            hex::encode(old_hash)
        )),
        policy_ids: Vec::new(),
        break_glass: false,
    });
    append(&targets, &mut tail, keys, pending)?;
    Ok(count)
}

/// Appends `records` to the audit trees of the new database as the store's own append does.
fn append(
    [audit, by_patient, by_transfer, break_glass, head, merkle_tree]: &[sled::Tree; 6],
    tail: &mut Tail,
    keys: &Keys,
    records: Vec<AuditRecord>,
) -> Result<(), StoreError> {
    let chained = Chained::new(tail, records, keys)?;
    (
        audit,
        by_patient,
        by_transfer,
        break_glass,
        head,
        merkle_tree,
    )
        .transaction(|(a, p, t, g, h, m)| {
            chained.write([a, p, t, g, h, m])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })
        .map_err(tx_err("write migrated audit log"))?;
    chained.advance(tail);
    Ok(())
}

/// `SHA-256("healthfed/audit/1" || prev_hash || body)`: the chain hash of format 1.
pub(crate) fn chain_hash_v1(prev_hash: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(HASH_DOMAIN_V1);
    ctx.update(prev_hash);
    ctx.update(body);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
