//! Seal + open speed of each envelope suite through the public API (whole envelopes in memory,
//! 1 MiB chunks, the gateway's chunk size), measured in alternating rounds so a change in the
//! machine's speed hits every suite alike. Reports MB/s per side and the ratio to
//! `hpke-aes-256-gcm` in the same run.
//!
//! `cargo run --release -p gateway-envelope --example suite_speed [MiB] [rounds]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::time::{Duration, Instant};

use gateway_envelope::{
    open_all, seal_to_vec, sha256, EncryptionSecretKey, Limits, SealParams, SigningKey, Suite,
    TransferId, DEFAULT_CHUNK_SIZE,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(64, |a| a.parse().expect("MiB"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("rounds"));
    let payload: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[7])
        .collect();
    let signing = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let verifying = signing.verifying_key();
    let recipient = EncryptionSecretKey::generate().unwrap();
    let params = |suite| SealParams {
        transfer_id: TransferId([7; 16]),
        sender: "a.example",
        recipient: "b.example",
        created_at_ms: 0,
        payload_len: payload.len() as u64,
        payload_digest: sha256(&payload),
        suite,
        chunk_size: DEFAULT_CHUNK_SIZE,
    };
    let mut seal = [Duration::ZERO; 3];
    let mut open = [Duration::ZERO; 3];
    for _ in 0..rounds {
        for (i, suite) in Suite::ALL.into_iter().enumerate() {
            let t = Instant::now();
            let envelope = seal_to_vec(
                &params(suite),
                b"{}",
                &payload,
                &recipient.public_key(),
                &signing,
            )
            .unwrap();
            seal[i] += t.elapsed();
            let t = Instant::now();
            let opened = open_all(
                &envelope,
                |_| vec![verifying],
                &[&recipient],
                Limits::default(),
            )
            .unwrap();
            open[i] += t.elapsed();
            assert_eq!(opened.payload.len(), payload.len());
        }
    }
    let mb = (payload.len() * rounds) as f64 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!("{mib} MiB x {rounds} rounds, seal / open MB/s (ratio to hpke-aes-256-gcm)");
    for (i, suite) in Suite::ALL.into_iter().enumerate() {
        println!(
            "{:<24} seal {:>7.0} ({:.2}x)  open {:>7.0} ({:.2}x)",
            suite.name(),
            rate(seal[i]),
            rate(seal[i]) / rate(seal[0]),
            rate(open[i]),
            rate(open[i]) / rate(open[0]),
        );
    }
}
