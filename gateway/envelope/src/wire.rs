//! The byte layout: constants, the postcard-encoded header structs, AAD and HPKE info.
//!
//! Only this module derives serde; the rest of the crate works with parsed types.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EnvelopeError;
use crate::keys::TransferId;
use crate::suite::Suite;

/// First four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"HFE1";
/// The only header version this code writes and reads.
pub const VERSION: u16 = 1;
/// Hard cap on the signed header, whatever the configured limits say.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Hard cap on `chunk_size`, so one frame never needs more than this (plus the tag) in memory.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Longest facility name accepted in `sender`/`recipient`, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// AEAD tag length of both suites; every frame is its plaintext plus this.
pub const TAG_LEN: usize = 16;

/// Signature domain of the header: `domain || header_bytes` is signed.
pub(crate) const HEADER_SIG_DOMAIN: &[u8] = b"healthfed/envelope-header/1\0";
/// Prefix of the HPKE info string.
pub(crate) const INFO_PREFIX: &[u8] = b"healthfed/envelope/1\0";

/// The signed part of the header, exactly as encoded.
#[derive(Serialize, Deserialize)]
pub(crate) struct HeaderWire {
    pub version: u16,
    /// [`Suite::wire_id`]: 2 and 3 = HPKE AES-256-GCM and ChaCha20-Poly1305 (their RFC 9180
    /// aead_ids), 0xFF02 = ring AES-256-GCM keyed by an export-only HPKE context.
    pub suite: u16,
    pub transfer_id: [u8; 16],
    pub sender: String,
    pub recipient: String,
    pub created_at_ms: u64,
    pub metadata_len: u32,
    pub payload_len: u64,
    pub payload_digest: [u8; 32],
    pub chunk_size: u32,
    pub hpke_enc: [u8; 32],
}

/// The header bytes and their signature.
#[derive(Serialize, Deserialize)]
pub(crate) struct SignedHeaderWire {
    pub header_bytes: Vec<u8>,
    pub signature: Sig64,
}

/// A 64-byte signature, encoded as 64 raw bytes (serde only derives arrays up to 32).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sig64(pub [u8; 64]);

/// The parsed header: every field checked for shape, nothing verified yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub suite: Suite,
    pub transfer_id: TransferId,
    pub sender: String,
    pub recipient: String,
    pub created_at_ms: u64,
    pub metadata_len: u32,
    pub payload_len: u64,
    pub payload_digest: [u8; 32],
    pub chunk_size: u32,
    pub hpke_enc: [u8; 32],
}

impl Header {
    /// Checks everything that does not depend on local limits.
    pub(crate) fn from_wire(wire: HeaderWire) -> Result<Self, EnvelopeError> {
        if wire.version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(wire.version));
        }
        let suite = Suite::from_wire_id(wire.suite)?;
        if !valid_name(&wire.sender) {
            return Err(EnvelopeError::Malformed("sender name"));
        }
        if !valid_name(&wire.recipient) {
            return Err(EnvelopeError::Malformed("recipient name"));
        }
        check_chunk_size(wire.chunk_size)?;
        Ok(Self {
            suite,
            transfer_id: TransferId(wire.transfer_id),
            sender: wire.sender,
            recipient: wire.recipient,
            created_at_ms: wire.created_at_ms,
            metadata_len: wire.metadata_len,
            payload_len: wire.payload_len,
            payload_digest: wire.payload_digest,
            chunk_size: wire.chunk_size,
            hpke_enc: wire.hpke_enc,
        })
    }

    pub(crate) fn to_wire(&self) -> HeaderWire {
        HeaderWire {
            version: VERSION,
            suite: self.suite.wire_id(),
            transfer_id: self.transfer_id.0,
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            created_at_ms: self.created_at_ms,
            metadata_len: self.metadata_len,
            payload_len: self.payload_len,
            payload_digest: self.payload_digest,
            chunk_size: self.chunk_size,
            hpke_enc: self.hpke_enc,
        }
    }

    /// The HPKE info string binding the key schedule to this transfer and its two parties.
    pub(crate) fn hpke_info(&self) -> Vec<u8> {
        hpke_info(&self.transfer_id, &self.sender, &self.recipient)
    }

    /// Number of ciphertext bytes of the metadata frame.
    pub(crate) fn metadata_frame_len(&self) -> u64 {
        u64::from(self.metadata_len) + TAG_LEN as u64
    }

    /// Largest ciphertext of a payload frame.
    pub(crate) fn max_payload_frame_len(&self) -> u64 {
        u64::from(self.chunk_size) + TAG_LEN as u64
    }
}

/// `INFO_PREFIX || transfer_id || sender || 0 || recipient`; names never contain NUL.
/// The start of an envelope, `MAGIC || len || signed header`, read from `r`: what proves who
/// sealed what for whom without the payload (evidence files keep it after the envelope goes).
/// Refuses anything that does not start as an envelope or whose header is over the limit.
pub fn read_signed_header(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut r = r.take(8 + u64::from(MAX_HEADER_LEN));
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&prefix[4..]);
    let len = u32::from_be_bytes(len);
    if prefix[..4] != MAGIC || len > MAX_HEADER_LEN {
        return Err(std::io::Error::other("not the start of an envelope"));
    }
    let mut out = prefix.to_vec();
    r.take(u64::from(len)).read_to_end(&mut out)?;
    if out.len() != 8 + len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(out)
}

pub(crate) fn hpke_info(transfer_id: &TransferId, sender: &str, recipient: &str) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_PREFIX.len() + 16 + sender.len() + 1 + recipient.len());
    info.extend_from_slice(INFO_PREFIX);
    info.extend_from_slice(&transfer_id.0);
    info.extend_from_slice(sender.as_bytes());
    info.push(0);
    info.extend_from_slice(recipient.as_bytes());
    info
}

/// `SHA-256(signed header bytes) || u64-be index || u8 is_last`.
pub(crate) fn frame_aad(header_digest: &[u8; 32], index: u64, last: bool) -> [u8; 41] {
    let mut aad = [0u8; 41];
    let (digest, rest) = aad.split_at_mut(32);
    digest.copy_from_slice(header_digest);
    let (index_bytes, last_byte) = rest.split_at_mut(8);
    index_bytes.copy_from_slice(&index.to_be_bytes());
    last_byte.fill(u8::from(last));
    aad
}

/// A facility name: 1 to 255 bytes, no control characters (so no NUL, which separates names in
/// the HPKE info, and nothing that could forge log lines).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

pub(crate) fn check_chunk_size(chunk_size: u32) -> Result<(), EnvelopeError> {
    if chunk_size == 0 {
        return Err(EnvelopeError::Malformed("chunk size is zero"));
    }
    if chunk_size > MAX_CHUNK_SIZE {
        return Err(EnvelopeError::TooLarge("chunk size"));
    }
    Ok(())
}

/// Encodes with postcard; these plain structs (no maps, no unsized sequences) cannot fail to
/// encode, but a failure is still reported rather than assumed away.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    postcard::to_allocvec(value).map_err(|_| EnvelopeError::InvalidInput("encoding failed"))
}

/// Decodes with postcard and refuses trailing bytes, so each value has one encoding.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<T, EnvelopeError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(EnvelopeError::Malformed(what)),
        Err(_) => Err(EnvelopeError::Malformed(what)),
    }
}

/// Reads just the leading version number, so an unknown version is reported as such instead of
/// as a decoding error.
pub(crate) fn leading_version(bytes: &[u8]) -> Result<u16, EnvelopeError> {
    postcard::take_from_bytes::<u16>(bytes)
        .map(|(version, _)| version)
        .map_err(|_| EnvelopeError::Malformed("version"))
}

impl Serialize for Sig64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Sig64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Sig64Visitor;

        impl<'de> Visitor<'de> for Sig64Visitor {
            type Value = Sig64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sig64, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig64(out))
            }
        }

        deserializer.deserialize_tuple(64, Sig64Visitor)
    }
}
