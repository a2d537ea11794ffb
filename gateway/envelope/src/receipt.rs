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
/// Wire version of messages and of receipts without a receiver's decision.
const VERSION: u16 = 1;
/// Wire version of receipts that bind the receiver's policy decision and consent basis.
const RECEIPT_VERSION_2: u16 = 2;
/// Longest domain accepted by [`verify_message`].
const MAX_DOMAIN_LEN: usize = 255;

/// Receipts: the receiver signs (transfer id, payload digest, receive time and, from version
/// 2, the policy decision it took) and the sender verifies.
///
/// Wire: `receipt_bytes` is postcard of `ReceiptWire` (version 1: no decision) or
/// `ReceiptWireV2` (version 2: the same fields, then outcome, policy ids, purpose and the
/// consent basis digest). The leading version decides; both verify.
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
    /// The receiver's decision to accept it (version 2); `None` in version 1 receipts.
    pub decision: Option<ReceiverDecision>,
}

/// What the receiver decided when it accepted the transfer, as it signs it in the receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverDecision {
    /// `permit` (a receipt is only given for an accepted transfer).
    pub outcome: String,
    /// The policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// The purpose of use the decision was taken for.
    pub purpose: String,
    /// SHA-256 of the consent basis the receiver evaluated (its own directives merged with the
    /// sender's asserted basis); the gateway defines the encoding (`gateway::evidence`).
    pub consent_basis_digest: [u8; 32],
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
struct ReceiptWireV2 {
    version: u16,
    transfer_id: [u8; 16],
    sender: String,
    receiver: String,
    payload_digest: [u8; 32],
    header_digest: [u8; 32],
    received_at_ms: u64,
    outcome: String,
    policy_ids: Vec<String>,
    purpose: String,
    consent_basis_digest: [u8; 32],
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
    /// Signs a receipt: version 2 when it carries the receiver's decision, else version 1.
    pub fn sign(receipt: &Receipt, signer: &SigningKey) -> SignedReceipt {
        let receipt_bytes = match &receipt.decision {
            None => encode_infallible(&ReceiptWire {
                version: VERSION,
                transfer_id: receipt.transfer_id.0,
                sender: receipt.sender.clone(),
                receiver: receipt.receiver.clone(),
                payload_digest: receipt.payload_digest,
                header_digest: receipt.header_digest,
                received_at_ms: receipt.received_at_ms,
            }),
            Some(d) => encode_infallible(&ReceiptWireV2 {
                version: RECEIPT_VERSION_2,
                transfer_id: receipt.transfer_id.0,
                sender: receipt.sender.clone(),
                receiver: receipt.receiver.clone(),
                payload_digest: receipt.payload_digest,
                header_digest: receipt.header_digest,
                received_at_ms: receipt.received_at_ms,
                outcome: d.outcome.clone(),
                policy_ids: d.policy_ids.clone(),
                purpose: d.purpose.clone(),
                consent_basis_digest: d.consent_basis_digest,
            }),
        };
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
        match wire::leading_version(&self.receipt_bytes)? {
            VERSION => {
                let r: ReceiptWire = wire::decode(&self.receipt_bytes, "receipt")?;
                Ok(Receipt {
                    transfer_id: TransferId(r.transfer_id),
                    sender: r.sender,
                    receiver: r.receiver,
                    payload_digest: r.payload_digest,
                    header_digest: r.header_digest,
                    received_at_ms: r.received_at_ms,
                    decision: None,
                })
            }
            RECEIPT_VERSION_2 => {
                let r: ReceiptWireV2 = wire::decode(&self.receipt_bytes, "receipt")?;
                Ok(Receipt {
                    transfer_id: TransferId(r.transfer_id),
                    sender: r.sender,
                    receiver: r.receiver,
                    payload_digest: r.payload_digest,
                    header_digest: r.header_digest,
                    received_at_ms: r.received_at_ms,
                    decision: Some(ReceiverDecision {
                        outcome: r.outcome,
                        policy_ids: r.policy_ids,
                        purpose: r.purpose,
                        consent_basis_digest: r.consent_basis_digest,
                    }),
                })
            }
            other => Err(EnvelopeError::UnsupportedVersion(other)),
        }
    }

    /// The receipt's wire version (1 or 2), read without verifying anything.
    pub fn version(&self) -> Result<u16, EnvelopeError> {
        wire::leading_version(&self.receipt_bytes)
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
