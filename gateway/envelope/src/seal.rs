//! The sending side: sign the header, then encrypt metadata and payload chunk by chunk.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::EnvelopeError;
use crate::keys::{sha256, EncryptionPublicKey, SigningKey, TransferId};
use crate::suite::{self, SenderCtx, Suite};
use crate::wire::{
    self, Header, Sig64, SignedHeaderWire, HEADER_SIG_DOMAIN, MAGIC, MAX_HEADER_LEN, TAG_LEN,
};

/// Default plaintext bytes per payload frame.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

/// What the sender puts in the (signed, cleartext) header.
#[derive(Clone, Debug)]
pub struct SealParams<'a> {
    pub transfer_id: TransferId,
    pub sender: &'a str,
    pub recipient: &'a str,
    pub created_at_ms: u64,
    /// Exact plaintext payload length; the chunks must add up to it.
    pub payload_len: u64,
    /// SHA-256 of the plaintext payload, as the caller computed it while reading the payload.
    /// Not recomputed here: that would be a second full pass over every payload (a third of
    /// the sender's CPU for a large file). The recipient's [`crate::Opener`] recomputes it and
    /// refuses an envelope whose payload does not match, so a wrong digest cannot be delivered.
    pub payload_digest: [u8; 32],
    pub suite: Suite,
    pub chunk_size: u32,
}

/// Seals the payload frames of one envelope, in order.
pub struct Sealer {
    ctx: SenderCtx,
    header_digest: [u8; 32],
    next_index: u64,
    sealed_len: u64,
    payload_len: u64,
    chunk_size: u32,
    finished: bool,
}

impl Sealer {
    /// Returns the sealer and the envelope prefix: magic, length, signed header and the metadata
    /// frame.
    pub fn start(
        params: &SealParams,
        metadata: &[u8],
        recipient: &EncryptionPublicKey,
        signer: &SigningKey,
    ) -> Result<(Sealer, Vec<u8>), EnvelopeError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(ikm.as_mut())
            .map_err(|_| EnvelopeError::Rng)?;
        Self::start_with_ikm(params, metadata, recipient, signer, &ikm)
    }

    /// [`Sealer::start`] with the HPKE ephemeral key material given (tests use it for
    /// determinism; production draws it from the system RNG).
    pub(crate) fn start_with_ikm(
        params: &SealParams,
        metadata: &[u8],
        recipient: &EncryptionPublicKey,
        signer: &SigningKey,
        ikm: &Zeroizing<[u8; 32]>,
    ) -> Result<(Sealer, Vec<u8>), EnvelopeError> {
        if !wire::valid_name(params.sender) {
            return Err(EnvelopeError::InvalidInput("sender name"));
        }
        if !wire::valid_name(params.recipient) {
            return Err(EnvelopeError::InvalidInput("recipient name"));
        }
        wire::check_chunk_size(params.chunk_size)
            .map_err(|_| EnvelopeError::InvalidInput("chunk size"))?;
        let metadata_len = u32::try_from(metadata.len())
            .ok()
            .filter(|len| len.checked_add(TAG_LEN as u32).is_some())
            .ok_or(EnvelopeError::TooLarge("metadata"))?;

        let info = wire::hpke_info(&params.transfer_id, params.sender, params.recipient);
        let (hpke_enc, mut ctx) =
            suite::setup_sender(params.suite, &recipient.hpke()?, &info, ikm)?;

        let header = Header {
            suite: params.suite,
            transfer_id: params.transfer_id,
            sender: params.sender.to_owned(),
            recipient: params.recipient.to_owned(),
            created_at_ms: params.created_at_ms,
            metadata_len,
            payload_len: params.payload_len,
            payload_digest: params.payload_digest,
            chunk_size: params.chunk_size,
            hpke_enc,
        };
        let header_bytes = wire::encode(&header.to_wire())?;
        let signature = signer.sign(HEADER_SIG_DOMAIN, &header_bytes);
        let signed_header = wire::encode(&SignedHeaderWire {
            header_bytes,
            signature: Sig64(signature),
        })?;
        let header_len = u32::try_from(signed_header.len())
            .ok()
            .filter(|len| *len <= MAX_HEADER_LEN)
            .ok_or(EnvelopeError::TooLarge("header"))?;
        let header_digest = sha256(&signed_header);

        let metadata_frame = ctx.seal(metadata, &wire::frame_aad(&header_digest, 0, false))?;
        let mut prefix =
            Vec::with_capacity(MAGIC.len() + 4 + signed_header.len() + 4 + metadata_frame.len());
        prefix.extend_from_slice(&MAGIC);
        prefix.extend_from_slice(&header_len.to_be_bytes());
        prefix.extend_from_slice(&signed_header);
        push_frame(&mut prefix, &metadata_frame)?;

        let sealer = Sealer {
            ctx,
            header_digest,
            next_index: 1,
            sealed_len: 0,
            payload_len: params.payload_len,
            chunk_size: params.chunk_size,
            finished: false,
        };
        Ok((sealer, prefix))
    }

    /// Seal the next payload chunk (len == chunk_size except the last, which may be shorter or
    /// empty) and return its frame bytes.
    ///
    /// Calls that break these rules are refused without changing the sealer's state. The last
    /// chunk must bring the total to `payload_len`, otherwise no last frame is produced.
    pub fn seal_chunk(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, EnvelopeError> {
        let mut frame = Vec::with_capacity(4 + chunk.len() + TAG_LEN);
        self.seal_chunk_into(chunk, last, &mut frame)?;
        Ok(frame)
    }

    /// [`Sealer::seal_chunk`] appending the frame to `out` (a whole small envelope can be
    /// sealed into one buffer). On error `out` is left as it was.
    pub fn seal_chunk_into(
        &mut self,
        chunk: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        if self.finished {
            return Err(EnvelopeError::FrameAfterLast);
        }
        let len = u64::try_from(chunk.len()).map_err(|_| EnvelopeError::TooLarge("chunk"))?;
        if len > u64::from(self.chunk_size) {
            return Err(EnvelopeError::TooLarge("chunk"));
        }
        if !last && len != u64::from(self.chunk_size) {
            return Err(EnvelopeError::InvalidInput(
                "only the last chunk may be short",
            ));
        }
        let total = self
            .sealed_len
            .checked_add(len)
            .filter(|total| *total <= self.payload_len)
            .ok_or(EnvelopeError::LengthMismatch)?;
        if last && total != self.payload_len {
            return Err(EnvelopeError::LengthMismatch);
        }

        let aad = wire::frame_aad(&self.header_digest, self.next_index, last);
        let frame_len =
            u32::try_from(chunk.len() + TAG_LEN).map_err(|_| EnvelopeError::TooLarge("frame"))?;
        let start = out.len();
        out.reserve(4 + chunk.len() + TAG_LEN);
        out.extend_from_slice(&frame_len.to_be_bytes());
        if let Err(e) = self.ctx.seal_into(chunk, &aad, out) {
            out.truncate(start);
            return Err(e);
        }

        self.sealed_len = total;
        self.next_index += 1;
        self.finished = last;
        Ok(())
    }

    /// Seals `rest`, the whole remaining payload, as its frames (the last one flagged, an
    /// empty last frame for an empty payload) appended to `out`, with room reserved once.
    pub fn seal_rest_into(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let chunk_size =
            usize::try_from(self.chunk_size).map_err(|_| EnvelopeError::TooLarge("chunk size"))?;
        let frames = rest.len().div_ceil(chunk_size).max(1);
        out.reserve(rest.len() + frames * (4 + TAG_LEN));
        if rest.is_empty() {
            return self.seal_chunk_into(&[], true, out);
        }
        let mut chunks = rest.chunks(chunk_size).peekable();
        while let Some(chunk) = chunks.next() {
            self.seal_chunk_into(chunk, chunks.peek().is_none(), out)?;
        }
        Ok(())
    }

    /// Whether the last frame has been sealed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("next_index", &self.next_index)
            .field("sealed_len", &self.sealed_len)
            .field("payload_len", &self.payload_len)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Seals a whole envelope held in memory.
pub fn seal_to_vec(
    params: &SealParams,
    metadata: &[u8],
    payload: &[u8],
    recipient: &EncryptionPublicKey,
    signer: &SigningKey,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut ikm = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(ikm.as_mut())
        .map_err(|_| EnvelopeError::Rng)?;
    seal_to_vec_with_ikm(params, metadata, payload, recipient, signer, &ikm)
}

pub(crate) fn seal_to_vec_with_ikm(
    params: &SealParams,
    metadata: &[u8],
    payload: &[u8],
    recipient: &EncryptionPublicKey,
    signer: &SigningKey,
    ikm: &Zeroizing<[u8; 32]>,
) -> Result<Vec<u8>, EnvelopeError> {
    if u64::try_from(payload.len()).ok() != Some(params.payload_len) {
        return Err(EnvelopeError::LengthMismatch);
    }
    let (mut sealer, mut out) = Sealer::start_with_ikm(params, metadata, recipient, signer, ikm)?;
    sealer.seal_rest_into(payload, &mut out)?;
    Ok(out)
}

/// Appends `u32-be len || ciphertext`.
fn push_frame(out: &mut Vec<u8>, ciphertext: &[u8]) -> Result<(), EnvelopeError> {
    let len = u32::try_from(ciphertext.len()).map_err(|_| EnvelopeError::TooLarge("frame"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(ciphertext);
    Ok(())
}
