//! `open_all` on arbitrary bytes with fixed keys. Must never panic or succeed.

#![no_main]

use gateway_envelope::{open_all, EncryptionSecretKey, Limits, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = EncryptionSecretKey::from_bytes([7; 32]);
    // Any 32 bytes will do as a verifying key: forging a signature is not the point here.
    let key = VerifyingKey([9; 32]);
    let result = open_all(data, |_| vec![key], &[&secret], Limits::default());
    assert!(result.is_err());
});
