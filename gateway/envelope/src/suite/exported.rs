//! The frame cipher of [`Suite::ExportedAes256Gcm`](super::Suite): ring's AES-256-GCM, keyed
//! through the exporter (RFC 9180 §5.3) of an export-only HPKE context (aead_id 0xFFFF).
//!
//! Why: hpke's own AES-256-GCM (RustCrypto) seals and opens about 2.2× slower than ring's on
//! the machines we measure, and hpke does not hand out its key schedule's key. An export-only
//! context is the form RFC 9180 gives for "HPKE as a KEM for another AEAD": the exported key
//! and base nonce are bound to the same encapsulation and `info` as the key schedule's would
//! be. Frames then use HPKE's own nonce rule, ComputeNonce (§5.2): `base_nonce XOR
//! I2OSP(seq, 12)`, sequence numbers from 0. So with the key schedule's key and base nonce
//! this cipher is exactly HPKE's AES-256-GCM context, which the tests check against the RFC
//! vectors.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::error::EnvelopeError;

/// Exporter context for the AES-256-GCM key (32 bytes).
pub(crate) const KEY_CONTEXT: &[u8] = b"healthfed/envelope/1 aes-256-gcm key";
/// Exporter context for the base nonce (12 bytes).
pub(crate) const NONCE_CONTEXT: &[u8] = b"healthfed/envelope/1 aes-256-gcm base nonce";

/// AES-256-GCM with HPKE's sequence-numbered nonces, for one envelope, one direction.
pub(crate) struct FrameCipher {
    key: LessSafeKey,
    base_nonce: [u8; NONCE_LEN],
    seq: u64,
}

impl FrameCipher {
    /// A cipher from the exporter of an export-only context: `export(context, out)` fills
    /// `out` with `Export(context, out.len())`.
    pub(crate) fn from_exporter(
        export: impl Fn(&[u8], &mut [u8]) -> Result<(), EnvelopeError>,
    ) -> Result<Self, EnvelopeError> {
        let mut key = Zeroizing::new([0u8; 32]);
        export(KEY_CONTEXT, key.as_mut_slice())?;
        let mut base_nonce = [0u8; NONCE_LEN];
        export(NONCE_CONTEXT, &mut base_nonce)?;
        Self::new(&key, base_nonce)
    }

    pub(crate) fn new(key: &[u8; 32], base_nonce: [u8; NONCE_LEN]) -> Result<Self, EnvelopeError> {
        let key = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| EnvelopeError::InvalidInput("aes-256-gcm key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            base_nonce,
            seq: 0,
        })
    }

    /// ComputeNonce(seq): the sequence number, big-endian, XORed into the low bytes of the base
    /// nonce. Refuses the last sequence number so it can never wrap.
    fn nonce(&self) -> Result<Nonce, EnvelopeError> {
        if self.seq == u64::MAX {
            return Err(EnvelopeError::TooLarge("frame count"));
        }
        let mut nonce = self.base_nonce;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals the next message and appends `ciphertext || tag` to `out`. On failure `out` is
    /// as it was and the sequence number unchanged.
    pub(crate) fn seal_into(
        &mut self,
        plaintext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let nonce = self.nonce()?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let sealed = match out.get_mut(start..) {
            Some(body) => self
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(aad), body),
            None => return Err(EnvelopeError::InvalidInput("seal buffer")),
        };
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.seq += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(EnvelopeError::InvalidInput("aes-256-gcm refused to seal"))
            }
        }
    }

    /// Opens the next message into `out` (replacing its contents). On failure `out` is left
    /// empty and the sequence number unchanged.
    pub(crate) fn open_into(
        &mut self,
        ciphertext: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        out.clear();
        let (body, tag) = super::split_tag(ciphertext)?;
        let tag = Tag::try_from(tag).map_err(|_| EnvelopeError::Decrypt)?;
        let nonce = self.nonce().map_err(|_| EnvelopeError::Decrypt)?;
        out.extend_from_slice(body);
        let opened = self
            .key
            .open_in_place_separate_tag(nonce, Aad::from(aad), tag, out, 0..);
        if opened.is_err() {
            out.clear();
            return Err(EnvelopeError::Decrypt);
        }
        self.seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly on any unexpected error"
    )]

    use super::*;

    #[test]
    fn the_sequence_number_never_wraps() {
        let mut sealer = FrameCipher::new(&[1; 32], [2; 12]).unwrap();
        sealer.seq = u64::MAX - 1;
        let mut out = b"kept".to_vec();
        sealer.seal_into(b"last", b"", &mut out).unwrap();
        assert_eq!(
            sealer.seal_into(b"one too many", b"", &mut out),
            Err(EnvelopeError::TooLarge("frame count"))
        );
        assert_eq!(
            out.len(),
            4 + 4 + crate::wire::TAG_LEN,
            "a refused seal appends nothing"
        );

        let mut opener = FrameCipher::new(&[1; 32], [2; 12]).unwrap();
        opener.seq = u64::MAX - 1;
        let mut opened = Vec::new();
        opener.open_into(&out[4..], b"", &mut opened).unwrap();
        assert_eq!(opened, b"last");
        assert_eq!(
            opener.open_into(&out[4..], b"", &mut opened),
            Err(EnvelopeError::Decrypt)
        );
    }
}
