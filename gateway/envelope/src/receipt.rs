//! Signed receipts and generic signed messages.
//!
//! Every signature in this crate covers `domain || bytes` with a distinct NUL-terminated
//! domain, so a signature made for one purpose (header, receipt, message of domain X) never
//! verifies for another.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::EnvelopeError;
use crate::keys::{SigningKey, TransferId, VerifyingKey};
use crate::wire::{self, Sig64};

/// Signature domain of receipts.
const RECEIPT_SIG_DOMAIN: &[u8] = b"healthfed/receipt/1\0";
/// Signature domain of generic messages; the caller's domain is inside the signed body.
const MESSAGE_SIG_DOMAIN: &[u8] = b"healthfed/message/1\0";
/// Wire version of receipts and messages.
const VERSION: u16 = 1;
/// Longest domain accepted by [`verify_message`].
const MAX_DOMAIN_LEN: usize = 255;

/// Receipts: the receiver signs (transfer id, payload digest, receive time) and the sender
/// verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub transfer_id: TransferId,
    /// The facility that sent the envelope.
    pub sender: String,
    /// The facility that received it and signs this receipt.
    pub receiver: String,
    pub payload_digest: [u8; 32],
    /// SHA-256 of the envelope's signed header bytes.
    pub header_digest: [u8; 32],
    pub received_at_ms: u64,
}

/// A receipt and the receiver's signature over its encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    receipt_bytes: Vec<u8>,
    signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct ReceiptWire {
    version: u16,
    transfer_id: [u8; 16],
    sender: String,
    receiver: String,
    payload_digest: [u8; 32],
    header_digest: [u8; 32],
    received_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct SignedReceiptWire {
    receipt_bytes: Vec<u8>,
    signature: Sig64,
}

/// The signed body of a generic message.
#[derive(Serialize, Deserialize)]
struct MessageBodyWire {
    version: u16,
    domain: String,
    body: Vec<u8>,
}

/// A generic message on the wire: `{ domain, body, signature }` plus a version.
#[derive(Serialize, Deserialize)]
struct SignedMessageWire {
    signed_bytes: Vec<u8>,
    signature: Sig64,
}

impl SignedReceipt {
    /// Signs a receipt.
    pub fn sign(receipt: &Receipt, signer: &SigningKey) -> SignedReceipt {
        let receipt_bytes = encode_infallible(&ReceiptWire {
            version: VERSION,
            transfer_id: receipt.transfer_id.0,
            sender: receipt.sender.clone(),
            receiver: receipt.receiver.clone(),
            payload_digest: receipt.payload_digest,
            header_digest: receipt.header_digest,
            received_at_ms: receipt.received_at_ms,
        });
        let signature = signer.sign(RECEIPT_SIG_DOMAIN, &receipt_bytes);
        SignedReceipt {
            receipt_bytes,
            signature,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode_infallible(&SignedReceiptWire {
            receipt_bytes: self.receipt_bytes.clone(),
            signature: Sig64(self.signature),
        })
    }

    /// Parses the wire form; nothing is verified until [`SignedReceipt::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedReceipt, EnvelopeError> {
        let wire: SignedReceiptWire = wire::decode(bytes, "signed receipt")?;
        Ok(SignedReceipt {
            receipt_bytes: wire.receipt_bytes,
            signature: wire.signature.0,
        })
    }

    /// Verifies under any of the receiver's keys and returns the receipt. The caller checks
    /// that its fields (transfer id, digests, receiver) match the transfer it sent.
    pub fn verify(&self, keys: &[VerifyingKey]) -> Result<Receipt, EnvelopeError> {
        VerifyingKey::verify_any(
            keys,
            RECEIPT_SIG_DOMAIN,
            &self.receipt_bytes,
            &self.signature,
        )?;
        let version = wire::leading_version(&self.receipt_bytes)?;
        if version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let receipt: ReceiptWire = wire::decode(&self.receipt_bytes, "receipt")?;
        Ok(Receipt {
            transfer_id: TransferId(receipt.transfer_id),
            sender: receipt.sender,
            receiver: receipt.receiver,
            payload_digest: receipt.payload_digest,
            header_digest: receipt.header_digest,
            received_at_ms: receipt.received_at_ms,
        })
    }
}

impl fmt::Debug for SignedReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedReceipt")
            .field("len", &self.receipt_bytes.len())
            .finish_non_exhaustive()
    }
}

/// Generic signed, versioned message with domain separation (for pull requests etc.).
///
/// `domain` names the purpose (e.g. `"healthfed/pull-request/1"`); the signature covers the
/// domain, so a message signed for one domain never verifies for another.
pub fn sign_message(signer: &SigningKey, domain: &str, body: &[u8]) -> Vec<u8> {
    let signed_bytes = encode_infallible(&MessageBodyWire {
        version: VERSION,
        domain: domain.to_owned(),
        body: body.to_vec(),
    });
    let signature = signer.sign(MESSAGE_SIG_DOMAIN, &signed_bytes);
    encode_infallible(&SignedMessageWire {
        signed_bytes,
        signature: Sig64(signature),
    })
}

/// Verifies a message from [`sign_message`] under any of the keys, checks its domain and
/// returns the body.
pub fn verify_message(
    bytes: &[u8],
    domain: &str,
    keys: &[VerifyingKey],
) -> Result<Vec<u8>, EnvelopeError> {
    let message: SignedMessageWire = wire::decode(bytes, "signed message")?;
    VerifyingKey::verify_any(
        keys,
        MESSAGE_SIG_DOMAIN,
        &message.signed_bytes,
        &message.signature.0,
    )?;
    let version = wire::leading_version(&message.signed_bytes)?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let body: MessageBodyWire = wire::decode(&message.signed_bytes, "message body")?;
    if body.domain.len() > MAX_DOMAIN_LEN || body.domain != domain {
        return Err(EnvelopeError::UnexpectedDomain);
    }
    Ok(body.body)
}

/// Encodes a value whose encoding cannot fail: postcard only fails on serde features (maps or
/// sequences of unknown length, custom errors) that these plain structs do not use.
fn encode_infallible<T: Serialize>(value: &T) -> Vec<u8> {
    match wire::encode(value) {
        Ok(bytes) => bytes,
        Err(_) => unreachable!("postcard encoding of a plain struct cannot fail"),
    }
}
