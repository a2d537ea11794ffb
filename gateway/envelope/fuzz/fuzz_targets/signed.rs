//! Receipt and message decoders on arbitrary bytes. Must never panic or verify.

#![no_main]

use gateway_envelope::{verify_message, SignedReceipt, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = VerifyingKey([9; 32]);
    if let Ok(receipt) = SignedReceipt::from_bytes(data) {
        assert!(receipt.verify(&[key]).is_err());
        assert_eq!(SignedReceipt::from_bytes(&receipt.to_bytes()).ok(), Some(receipt));
    }
    assert!(verify_message(data, "healthfed/fuzz/1", &[key]).is_err());
});
