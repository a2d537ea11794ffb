//! The receiving side: parse incrementally, verify the header, then decrypt frame by frame.
//!
//! Everything here treats its input as adversarial: sizes are checked against the header and
//! the local [`Limits`] before anything is allocated, and nothing panics on any input.

use std::fmt;

use crate::error::EnvelopeError;
use crate::keys::{sha256, EncryptionSecretKey, Sha256, TransferId, VerifyingKey};
use crate::suite::{self, ReceiverCtx, Suite};
use crate::wire::{
    self, Header, HeaderWire, SignedHeaderWire, HEADER_SIG_DOMAIN, MAGIC, MAX_HEADER_LEN, TAG_LEN,
};

/// Local limits on what a peer may make this node hold or process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest signed header accepted (capped at 64 KiB whatever this says).
    pub max_header: u32,
    /// Largest declared payload accepted.
    pub max_payload: u64,
    /// Largest declared metadata accepted (it is held in memory whole).
    pub max_metadata: u32,
}

impl Default for Limits {
    /// 64 KiB header, 4 GiB payload, 1 MiB metadata.
    fn default() -> Self {
        Self {
            max_header: MAX_HEADER_LEN,
            max_payload: 4 * 1024 * 1024 * 1024,
            max_metadata: 1024 * 1024,
        }
    }
}

/// Incremental parser: feed bytes as they arrive from the network.
///
/// It buffers at most what the caller pushes; callers pull frames with
/// [`EnvelopeReader::next_frame`] after every push so that the buffer stays around one frame.
/// After the first error every call returns that error again.
pub struct EnvelopeReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed; compacted lazily to keep `push` amortised O(n).
    start: usize,
    header: Option<UnverifiedHeader>,
    /// Frames returned so far (frame 0 is the metadata).
    frames: u64,
    /// Plaintext bytes the payload frames returned so far claim to carry.
    payload_seen: u64,
    /// A payload frame shorter than a full chunk has been returned; only the last can be.
    short_seen: bool,
    failed: Option<EnvelopeError>,
}

/// The header as received: shape-checked against the limits, signature NOT yet verified.
/// The sender name is what the caller uses to look up the verifying keys.
#[derive(Clone)]
pub struct UnverifiedHeader {
    header: Header,
    header_bytes: Vec<u8>,
    signature: [u8; 64],
    digest: [u8; 32],
}

/// A header whose signature verified under one of the sender's keys.
#[derive(Clone)]
pub struct VerifiedHeader {
    header: Header,
    digest: [u8; 32],
}

/// Decrypts the payload frames of one envelope, in order.
pub struct Opener {
    ctx: ReceiverCtx,
    header_digest: [u8; 32],
    payload_len: u64,
    payload_digest: [u8; 32],
    chunk_size: u32,
    next_index: u64,
    opened_len: u64,
    running_digest: Sha256,
    last_seen: bool,
    failed: bool,
}

/// A whole envelope, opened in memory. `Debug` shows sizes only.
pub struct Opened {
    pub header: VerifiedHeader,
    pub metadata: Vec<u8>,
    pub payload: Vec<u8>,
}

impl EnvelopeReader {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            start: 0,
            header: None,
            frames: 0,
            payload_seen: 0,
            short_seen: false,
            failed: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Compact before growing once more than half the buffer is consumed.
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Once enough bytes have arrived: the header, NOT yet verified (sender is read to look up
    /// the key). Returns the same header again on later calls.
    pub fn header(&mut self) -> Result<Option<UnverifiedHeader>, EnvelopeError> {
        self.sticky(|reader| reader.parse_header().map(|header| header.cloned()))
    }

    /// Next complete frame after the header, if buffered. Frame 0 is the metadata frame.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, EnvelopeError> {
        self.sticky(Self::parse_frame)
    }

    /// True when every pushed byte has been consumed as header or frames. At end of input, a
    /// reader that is not drained means the envelope was cut mid-header or mid-frame.
    pub fn is_drained(&self) -> bool {
        self.start >= self.buf.len()
    }

    fn sticky<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, EnvelopeError>,
    ) -> Result<T, EnvelopeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = step(self);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            // Nothing more will be read; free the buffer.
            self.buf = Vec::new();
            self.start = 0;
        }
        result
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    fn parse_header(&mut self) -> Result<Option<&UnverifiedHeader>, EnvelopeError> {
        if self.header.is_some() {
            return Ok(self.header.as_ref());
        }
        let pending = self.pending();
        // Refuse a wrong magic as soon as its first byte arrives.
        let magic_seen = pending.get(..MAGIC.len()).unwrap_or(pending);
        if MAGIC.get(..magic_seen.len()) != Some(magic_seen) {
            return Err(EnvelopeError::Malformed("magic"));
        }
        let Some(len_bytes) = pending.get(MAGIC.len()..MAGIC.len() + 4) else {
            return Ok(None);
        };
        let header_len = u32::from_be_bytes(read4(len_bytes));
        if header_len > self.limits.max_header.min(MAX_HEADER_LEN) {
            return Err(EnvelopeError::TooLarge("header"));
        }
        let body_start = MAGIC.len() + 4;
        let body_end = body_start + header_len as usize;
        let Some(signed_bytes) = pending.get(body_start..body_end) else {
            return Ok(None);
        };
        let header = parse_signed_header(signed_bytes, &self.limits)?;
        self.start += body_end;
        self.header = Some(header);
        Ok(self.header.as_ref())
    }

    fn parse_frame(&mut self) -> Result<Option<Vec<u8>>, EnvelopeError> {
        let (metadata_frame_len, max_frame_len, chunk_size, payload_len) =
            match self.parse_header()? {
                None => return Ok(None),
                Some(h) => (
                    h.header.metadata_frame_len(),
                    h.header.max_payload_frame_len(),
                    u64::from(h.header.chunk_size),
                    h.header.payload_len,
                ),
            };
        let pending = self.pending();
        let Some(len_bytes) = pending.get(..4) else {
            return Ok(None);
        };
        let frame_len = u64::from(u32::from_be_bytes(read4(len_bytes)));
        if self.frames == 0 {
            if frame_len != metadata_frame_len {
                return Err(EnvelopeError::LengthMismatch);
            }
        } else {
            // Only sizes are checked here; the Opener authenticates which frame is the last.
            if frame_len > max_frame_len {
                return Err(EnvelopeError::TooLarge("frame"));
            }
            let plain_len = frame_len
                .checked_sub(TAG_LEN as u64)
                .ok_or(EnvelopeError::Malformed("frame shorter than its tag"))?;
            if self.short_seen {
                return Err(EnvelopeError::FrameAfterLast);
            }
            let seen = self
                .payload_seen
                .checked_add(plain_len)
                .filter(|seen| *seen <= payload_len)
                .ok_or(EnvelopeError::LengthMismatch)?;
            // An empty frame once the payload is complete is the (optional) explicit last
            // frame; a short frame must be the last one.
            let short = plain_len < chunk_size;
            let Some(frame) = pending.get(4..4 + frame_len as usize) else {
                return Ok(None);
            };
            let frame = frame.to_vec();
            self.payload_seen = seen;
            self.short_seen = short;
            self.frames += 1;
            self.start += 4 + frame.len();
            return Ok(Some(frame));
        }
        let Some(frame) = pending.get(4..4 + frame_len as usize) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.frames += 1;
        self.start += 4 + frame.len();
        Ok(Some(frame))
    }
}

impl fmt::Debug for EnvelopeReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeReader")
            .field("buffered", &self.pending().len())
            .field("header", &self.header.is_some())
            .field("frames", &self.frames)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Copies a 4-byte slice into an array (callers slice exactly 4 bytes).
fn read4(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    out
}

/// Decodes and shape-checks the signed header bytes against the limits.
fn parse_signed_header(
    signed_bytes: &[u8],
    limits: &Limits,
) -> Result<UnverifiedHeader, EnvelopeError> {
    let signed: SignedHeaderWire = wire::decode(signed_bytes, "signed header")?;
    let version = wire::leading_version(&signed.header_bytes)?;
    if version != wire::VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let header_wire: HeaderWire = wire::decode(&signed.header_bytes, "header")?;
    let header = Header::from_wire(header_wire)?;
    if header.metadata_len > limits.max_metadata {
        return Err(EnvelopeError::TooLarge("metadata"));
    }
    if header.payload_len > limits.max_payload {
        return Err(EnvelopeError::TooLarge("payload"));
    }
    Ok(UnverifiedHeader {
        header,
        header_bytes: signed.header_bytes,
        signature: signed.signature.0,
        digest: sha256(signed_bytes),
    })
}

/// Accessors shared by both header states. All of it is cleartext on the wire.
macro_rules! header_accessors {
    () => {
        pub fn suite(&self) -> Suite {
            self.header.suite
        }
        pub fn transfer_id(&self) -> TransferId {
            self.header.transfer_id
        }
        /// The sending facility, as the header claims it.
        pub fn sender(&self) -> &str {
            &self.header.sender
        }
        /// The receiving facility, as the header claims it; callers check it is themselves.
        pub fn recipient(&self) -> &str {
            &self.header.recipient
        }
        pub fn created_at_ms(&self) -> u64 {
            self.header.created_at_ms
        }
        pub fn metadata_len(&self) -> u32 {
            self.header.metadata_len
        }
        pub fn payload_len(&self) -> u64 {
            self.header.payload_len
        }
        /// SHA-256 of the plaintext payload.
        pub fn payload_digest(&self) -> [u8; 32] {
            self.header.payload_digest
        }
        pub fn chunk_size(&self) -> u32 {
            self.header.chunk_size
        }
        /// The HPKE encapsulated key.
        pub fn hpke_enc(&self) -> [u8; 32] {
            self.header.hpke_enc
        }
        /// Always [`crate::VERSION`]: other versions are refused when parsing.
        pub fn version(&self) -> u16 {
            wire::VERSION
        }
        /// SHA-256 of the signed header bytes: names this exact envelope in receipts and audit.
        pub fn header_digest(&self) -> [u8; 32] {
            self.digest
        }
    };
}

impl UnverifiedHeader {
    header_accessors!();

    /// Verifies the signature under any of the keys (several during a rotation overlap).
    pub fn verify(self, sender_keys: &[VerifyingKey]) -> Result<VerifiedHeader, EnvelopeError> {
        VerifyingKey::verify_any(
            sender_keys,
            HEADER_SIG_DOMAIN,
            &self.header_bytes,
            &self.signature,
        )?;
        Ok(VerifiedHeader {
            header: self.header,
            digest: self.digest,
        })
    }
}

impl VerifiedHeader {
    header_accessors!();
}

impl fmt::Debug for UnverifiedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_header(f, "UnverifiedHeader", &self.header)
    }
}

impl fmt::Debug for VerifiedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_header(f, "VerifiedHeader", &self.header)
    }
}

/// Ids, times and sizes only: the same things that are visible on the wire.
fn debug_header(f: &mut fmt::Formatter<'_>, name: &str, header: &Header) -> fmt::Result {
    f.debug_struct(name)
        .field("transfer_id", &header.transfer_id)
        .field("sender", &header.sender)
        .field("recipient", &header.recipient)
        .field("created_at_ms", &header.created_at_ms)
        .field("suite", &header.suite)
        .field("metadata_len", &header.metadata_len)
        .field("payload_len", &header.payload_len)
        .field("chunk_size", &header.chunk_size)
        .finish_non_exhaustive()
}

impl Opener {
    /// Tries each secret key (current, then previous during rotation); fails if none opens the
    /// metadata frame. Returns the opener and the metadata.
    pub fn new(
        header: &VerifiedHeader,
        keys: &[&EncryptionSecretKey],
        metadata_frame: &[u8],
    ) -> Result<(Opener, Vec<u8>), EnvelopeError> {
        let h = &header.header;
        if u64::try_from(metadata_frame.len()).ok() != Some(h.metadata_frame_len()) {
            return Err(EnvelopeError::LengthMismatch);
        }
        let info = h.hpke_info();
        let aad = wire::frame_aad(&header.digest, 0, false);
        for key in keys {
            let Ok(mut ctx) = suite::setup_receiver(h.suite, key.hpke(), &h.hpke_enc, &info) else {
                continue;
            };
            if let Ok(metadata) = ctx.open(metadata_frame, &aad) {
                let opener = Opener {
                    ctx,
                    header_digest: header.digest,
                    payload_len: h.payload_len,
                    payload_digest: h.payload_digest,
                    chunk_size: h.chunk_size,
                    next_index: 1,
                    opened_len: 0,
                    running_digest: Sha256::new(),
                    last_seen: false,
                    failed: false,
                };
                return Ok((opener, metadata));
            }
        }
        Err(EnvelopeError::Decrypt)
    }

    /// Decrypts the next payload frame. Refuses frames after the last, and any frame once an
    /// error has occurred.
    ///
    /// Each chunk is authenticated, but the payload digest is only known to match after
    /// [`Opener::finish`]: callers keep the output provisional until then.
    pub fn open_chunk(&mut self, frame: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut plaintext = Vec::new();
        self.open_chunk_into(frame, &mut plaintext)?;
        Ok(plaintext)
    }

    /// [`Opener::open_chunk`] into a caller's buffer (its contents are replaced), so a
    /// receiver that only authenticates the payload reuses one buffer for every frame.
    pub fn open_chunk_into(
        &mut self,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        if self.failed {
            return Err(EnvelopeError::Aborted);
        }
        let result = self.open_chunk_inner(frame, out);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn open_chunk_inner(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if self.last_seen {
            return Err(EnvelopeError::FrameAfterLast);
        }
        let chunk_size = u64::from(self.chunk_size);
        let plain_len = u64::try_from(frame.len())
            .ok()
            .and_then(|len| len.checked_sub(TAG_LEN as u64))
            .ok_or(EnvelopeError::Malformed("frame shorter than its tag"))?;
        if plain_len > chunk_size {
            return Err(EnvelopeError::TooLarge("frame"));
        }
        let remaining = self
            .payload_len
            .checked_sub(self.opened_len)
            .ok_or(EnvelopeError::LengthMismatch)?;
        if plain_len > remaining {
            return Err(EnvelopeError::LengthMismatch);
        }
        // Which frame claims to be last is authenticated through the AAD. Only a full chunk
        // that completes the payload is ambiguous: the sender may mark it last, or follow it
        // with an empty last frame. Try "last" first, as `seal_to_vec` writes it.
        let candidates: &[bool] = if plain_len < chunk_size {
            if plain_len != remaining {
                return Err(EnvelopeError::LengthMismatch);
            }
            &[true]
        } else if plain_len == remaining {
            &[true, false]
        } else {
            &[false]
        };
        for &last in candidates {
            let aad = wire::frame_aad(&self.header_digest, self.next_index, last);
            // A failed open leaves the HPKE sequence number unchanged, so retrying is sound.
            if self.ctx.open_into(frame, &aad, out).is_ok() {
                self.running_digest.update(out);
                self.opened_len += plain_len;
                self.next_index += 1;
                self.last_seen = last;
                return Ok(());
            }
        }
        Err(EnvelopeError::Decrypt)
    }

    /// Checks that the last frame was seen, total length == payload_len, SHA-256 ==
    /// payload_digest.
    pub fn finish(self) -> Result<(), EnvelopeError> {
        if self.failed {
            return Err(EnvelopeError::Aborted);
        }
        if !self.last_seen {
            return Err(EnvelopeError::MissingLastFrame);
        }
        if self.opened_len != self.payload_len {
            return Err(EnvelopeError::LengthMismatch);
        }
        if self.running_digest.finish() != self.payload_digest {
            return Err(EnvelopeError::DigestMismatch);
        }
        Ok(())
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("next_index", &self.next_index)
            .field("opened_len", &self.opened_len)
            .field("payload_len", &self.payload_len)
            .field("last_seen", &self.last_seen)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("header", &self.header)
            .field("metadata_len", &self.metadata.len())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Convenience for whole envelopes in memory: parse, look up the sender's keys by the claimed
/// sender name, verify, decrypt and check the digest.
pub fn open_all(
    envelope: &[u8],
    sender_keys_for: impl Fn(&str) -> Vec<VerifyingKey>,
    keys: &[&EncryptionSecretKey],
    limits: Limits,
) -> Result<Opened, EnvelopeError> {
    let mut reader = EnvelopeReader::new(limits);
    reader.push(envelope);
    let unverified = reader.header()?.ok_or(EnvelopeError::Truncated)?;
    let sender_keys = sender_keys_for(unverified.sender());
    let header = unverified.verify(&sender_keys)?;
    let metadata_frame = reader.next_frame()?.ok_or(EnvelopeError::Truncated)?;
    let (mut opener, metadata) = Opener::new(&header, keys, &metadata_frame)?;
    // The declared length is bounded by the limits and by what actually arrived.
    let capacity = header.payload_len().min(envelope.len() as u64);
    let mut payload = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(frame) = reader.next_frame()? {
        payload.extend_from_slice(&opener.open_chunk(&frame)?);
    }
    if !reader.is_drained() {
        return Err(EnvelopeError::Truncated);
    }
    opener.finish()?;
    Ok(Opened {
        header,
        metadata,
        payload,
    })
}
