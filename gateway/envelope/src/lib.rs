//! `gateway-envelope`: the wire format of one healthfed transfer.
//!
//! The sender signs a header with Ed25519 (ring) and encrypts metadata and payload to the
//! recipient's X25519 key with HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256; the `hpke` crate). The frames use one of three [`Suite`]s: HPKE's own AES-256-GCM
//! or ChaCha20-Poly1305 context, or (the default) ring's AES-256-GCM keyed through an
//! export-only HPKE context, which is the fast one. The payload is sealed in
//! chunks so a large file streams through sender and receiver in bounded memory. Outside the
//! encryption only ids, times and sizes are visible.
//!
//! Invariant: **no I/O, not async.** Everything is a pure function over byte slices; the
//! gateway does the I/O and feeds bytes in ([`EnvelopeReader`]) or writes frames out
//! ([`Sealer`]).
//!
//! # Wire format, version 1
//!
//! ```text
//! envelope      := MAGIC "HFE1" | u32-be header_len | signed_header | frame*
//! signed_header := postcard SignedHeader { header_bytes: Vec<u8>, signature: [u8; 64] }
//! header_bytes  := postcard Header {
//!                    version: u16 (= 1), suite: u16 (2 HPKE AES-256-GCM, 3 HPKE
//!                    ChaCha20-Poly1305, 0xFF02 exported AES-256-GCM), transfer_id: [u8; 16],
//!                    sender: String,
//!                    recipient: String, created_at_ms: u64, metadata_len: u32,
//!                    payload_len: u64, payload_digest: [u8; 32], chunk_size: u32,
//!                    hpke_enc: [u8; 32] }
//! frame         := u32-be len | ciphertext
//!                  frame 0 = metadata (len = metadata_len + 16),
//!                  frames 1.. = payload chunks (at least one, even for an empty payload)
//! ```
//!
//! postcard encodes integers as varints, `Vec<u8>`/`String` as varint length + bytes and fixed
//! arrays (including the signature) as raw bytes. Decoding refuses trailing bytes.
//!
//! * Signature: Ed25519 over `b"healthfed/envelope-header/1\0" || header_bytes`.
//! * HPKE info: `b"healthfed/envelope/1\0" || transfer_id || sender || 0x00 || recipient`.
//!   Names are 1..=255 bytes without control characters (so without NUL).
//! * AAD of frame i: `SHA-256(signed_header) || u64-be i || u8 is_last`. This binds every frame
//!   to the exact header and its position, and marks the final frame so truncation is
//!   detected. HPKE's sequence numbers give the nonces, so frames are sealed and opened in
//!   order. The metadata frame has is_last = 0.
//! * Suites 2 and 3: the frames are HPKE messages of the base-mode context for that aead_id.
//!   Suite 0xFF02: the context is export-only (aead_id 0xFFFF); `key = Export("healthfed/
//!   envelope/1 aes-256-gcm key", 32)`, `base_nonce = Export("healthfed/envelope/1 aes-256-gcm
//!   base nonce", 12)`, and frame i (metadata = 0) is AES-256-GCM under `key` with nonce
//!   `base_nonce XOR I2OSP(i, 12)`, HPKE's ComputeNonce. Receivers open all three suites.
//! * Payload chunking: every payload frame but the last carries exactly `chunk_size` plaintext
//!   bytes; the last carries 0..=`chunk_size`. When the payload is a multiple of `chunk_size`
//!   the sender may mark the final full chunk last, or follow it with an empty last frame; the
//!   receiver accepts both (the AAD authenticates which one was meant). The plaintext lengths
//!   add up to `payload_len` and hash (SHA-256) to `payload_digest`.
//! * Limits: `header_len` ≤ 64 KiB (and ≤ [`Limits::max_header`]); `chunk_size` ≤ 4 MiB; a
//!   frame's ciphertext ≤ `chunk_size + 16`. All are checked before allocating.
//!
//! Receipts (`b"healthfed/receipt/1\0"`; wire version 1, or 2 with the receiver's policy
//! decision and consent basis digest, see [`Receipt`]) and generic messages
//! (`b"healthfed/message/1\0"`, with the caller's domain inside the signed bytes) use their
//! own signature domains.
//!
//! # Receiving
//!
//! ```text
//! reader.push(bytes) .. reader.header()? -> UnverifiedHeader  (look up keys by .sender())
//! header.verify(&sender_keys)? -> VerifiedHeader               (check .recipient() is us)
//! Opener::new(&header, &[&current, &previous], &reader.next_frame()?)? -> (opener, metadata)
//! opener.open_chunk(&frame)? for each further frame
//! at end of input: reader.is_drained() else Truncated; opener.finish()?
//! ```

mod error;
mod keys;
mod open;
mod receipt;
mod seal;
mod suite;
mod wire;

pub use error::EnvelopeError;
pub use keys::{
    sha256, EncryptionPublicKey, EncryptionSecretKey, Sha256, SigningKey, TransferId, VerifyingKey,
};
pub use open::{
    open_all, EnvelopeReader, Limits, Opened, Opener, UnverifiedHeader, VerifiedHeader,
};
pub use receipt::{sign_message, verify_message, Receipt, ReceiverDecision, SignedReceipt};
pub use seal::{seal_to_vec, SealParams, Sealer, DEFAULT_CHUNK_SIZE};
pub use suite::Suite;
pub use wire::{
    read_signed_header, MAGIC, MAX_CHUNK_SIZE, MAX_HEADER_LEN, MAX_NAME_LEN, TAG_LEN, VERSION,
};
