//! The fuzz targets on stable, without the fuzzer (docs/fuzzing.md): the committed seed corpus
//! and crash regressions replayed through the same target functions the fuzz binaries call
//! (tests/fuzz/src/lib.rs), a bounded deterministic mutation run over the seeds, and the seeds
//! themselves made again from a real federation (three real nodes, a transfer, its evidence
//! file, two archives), which must verify through every target.
//!
//! `HEALTHFED_UPDATE_FUZZ_SEEDS=1 cargo test -p tests --test fuzz_corpus a_real_federation`
//! writes the fresh federation's files over tests/fuzz/seeds and tests/fuzz/corpus (after a
//! change of a file format).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, reason = "the fuzz binaries use what these tests do not")]
mod fuzz;

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pki_tools::FacilityKind;

use fuzz::World;
use tests::{bundle_by_prefix, patient_id, Fed};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn world() -> World {
    World::load(&fuzz_dir().join("seeds")).unwrap()
}

/// The files under `dir/<target>/`, by target.
fn inputs_under(dir: &Path) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return out;
    };
    for target in targets {
        let target = target.unwrap().path();
        if !target.is_dir() {
            continue;
        }
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&target)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        out.insert(name, files);
    }
    out
}

/// Runs a target, turning a panic into a failure that names the input.
fn run(w: &World, target: &str, label: &str, data: &[u8]) -> Result<String, String> {
    match catch_unwind(AssertUnwindSafe(|| fuzz::run(target, w, data))) {
        Ok(r) => r,
        Err(_) => panic!(
            "{target} panicked on {label} ({} bytes): {}",
            data.len(),
            hex::encode(&data[..data.len().min(256)])
        ),
    }
}

#[test]
fn the_committed_seeds_verify_and_the_crash_regressions_are_refused_without_a_panic() {
    let w = world();
    // The corpus is the seeds' inputs, exactly: made from the committed files, not stale.
    let corpus = inputs_under(&fuzz_dir().join("corpus"));
    let mut expected: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (target, name, bytes) in w.seed_inputs() {
        expected
            .entry(target.to_owned())
            .or_default()
            .push((name, bytes));
    }
    for v in expected.values_mut() {
        v.sort();
    }
    assert_eq!(
        corpus.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "tests/fuzz/corpus: one folder per target"
    );
    assert_eq!(
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut t = fuzz::TARGETS.to_vec();
            t.sort_unstable();
            t
        },
        "every target has seeds"
    );
    for (target, inputs) in &corpus {
        assert!(
            *inputs == expected[target],
            "tests/fuzz/corpus/{target} differs from the seeds' inputs (re-run with \
             HEALTHFED_UPDATE_FUZZ_SEEDS=1)"
        );
        for (name, bytes) in inputs {
            let out = run(&w, target, name, bytes);
            assert!(out.is_ok(), "seed {target}/{name} refused: {out:?}");
        }
    }
    let evidence = run(&w, "evidence_file", "seed", &w.evidence).unwrap();
    assert!(evidence.contains("VERIFIED"), "{evidence}");
    assert!(evidence.contains("Witnessed by"), "{evidence}");

    // Crash regressions: each once made a target panic or hang; now refused, promptly.
    let regressions = inputs_under(&fuzz_dir().join("regressions"));
    for (target, inputs) in &regressions {
        assert!(fuzz::TARGETS.contains(&target.as_str()), "{target}");
        for (name, bytes) in inputs {
            let started = Instant::now();
            let out = run(&w, target, name, bytes);
            assert!(out.is_err(), "regression {target}/{name} verified: {out:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "regression {target}/{name} took {:?}",
                started.elapsed()
            );
        }
    }
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

/// One mutation of `seed`: a bit flip, a byte set, a truncation, a range deleted or
/// repeated, random bytes inserted, or a splice with another input of the same target.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut m = seed.to_vec();
    let at = rng.below(m.len());
    match rng.below(7) {
        0 => {
            if let Some(b) = m.get_mut(at) {
                *b ^= 1 << rng.below(8);
            }
        }
        1 => {
            if let Some(b) = m.get_mut(at) {
                *b = [0, 0xff, b'"', b'\n', b' ', b'=', b'0', 0x80][rng.below(8)];
            }
        }
        2 => m.truncate(at),
        3 => {
            let end = (at + 1 + rng.below(64)).min(m.len());
            m.drain(at..end);
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(m.len());
            let chunk = m[at..end].to_vec();
            m.splice(at..at, chunk);
        }
        5 => {
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            m.splice(at..at, bytes);
        }
        _ => {
            let other = others[rng.below(others.len())];
            let from = rng.below(other.len());
            m.truncate(at);
            m.extend_from_slice(&other[from..]);
        }
    }
    m
}

/// Targets whose every input is signed or proven by someone the fuzzer's bytes are not: any
/// input that verifies must show what a seed shows.
fn bound_by_signatures(target: &str, input: &[u8]) -> bool {
    match target {
        // Signed again inside the target: a changed input may verify as a changed file; these
        // check their own properties (a decoded receipt encodes back the same, the witness's
        // cosignature verifies) and must not panic.
        "archive_resigned" | "directory_payload" => false,
        "receipt" => input.first().is_some_and(|m| m & 1 == 0),
        _ => true,
    }
}

/// Files whose verifier accepts only the writer's exact bytes: a verified input must be a seed.
fn canonical_only(target: &str) -> bool {
    matches!(target, "evidence_file" | "archive_file")
}

#[test]
fn bounded_mutations_of_the_seeds_never_panic_and_never_verify_as_something_else() {
    let w = world();
    let mut seeds: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (target, _, bytes) in w.seed_inputs() {
        seeds.entry(target).or_default().push(bytes);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut total, mut verified) = (0usize, 0usize);
    let started = Instant::now();
    for (target, inputs) in &seeds {
        let accounts: Vec<String> = inputs
            .iter()
            .map(|s| run(&w, target, "seed", s).unwrap())
            .collect();
        let others: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        // About 3,000 inputs in all, spread over the targets by their number of seeds.
        let per_seed = (320 / inputs.len()).max(40);
        for seed in inputs {
            for _ in 0..per_seed {
                let m = mutate(&mut rng, seed, &others);
                total += 1;
                let label = format!("a mutation of a {target} seed");
                let Ok(account) = run(&w, target, &label, &m) else {
                    continue;
                };
                verified += 1;
                if inputs.contains(&m) || !bound_by_signatures(target, &m) {
                    continue;
                }
                assert!(
                    !canonical_only(target),
                    "{target}: a changed file verified:\n{account}"
                );
                assert!(
                    accounts.contains(&account),
                    "{target}: a changed input ({}) verified as something no seed shows:\n{account}",
                    hex::encode(&m[..m.len().min(256)])
                );
            }
        }
    }
    let took = started.elapsed();
    eprintln!("{total} mutated inputs, {verified} verified (as a seed shows), in {took:?}");
    assert!(total >= 2_500, "{total}");
    // Nearly all are refused: a run where most verify would mean the mutations miss.
    assert!(verified * 4 < total, "{verified} of {total} verified");
}

fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Makes the seeds from a real federation and checks they verify through every target; with
/// `HEALTHFED_UPDATE_FUZZ_SEEDS=1` writes them to tests/fuzz/seeds and tests/fuzz/corpus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_federation_s_evidence_and_archives_verify_through_every_target() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let _c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;

    let update = std::env::var_os("HEALTHFED_UPDATE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    let tmp = tempfile::tempdir().unwrap();
    let out = if update {
        fuzz_dir().join("seeds")
    } else {
        tmp.path().join("seeds")
    };
    std::fs::create_dir_all(&out).unwrap();
    let path_s = |name: &str| out.join(name).display().to_string();
    let (code, stdout, stderr) = a.cli(&[
        "evidence",
        "export",
        "--transfer",
        &id,
        "--out",
        &path_s("evidence.json"),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Two archives: the entries up to now, then those of a second transfer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = common::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&second, "delivered", Duration::from_secs(30))
        .await;
    for (file, before) in [
        ("archive-1.json", cutoff),
        ("archive-2.json", common::now_ms()),
    ] {
        let (code, stdout, stderr) = a.cli(&[
            "audit",
            "archive",
            "--before",
            &rfc3339_ms(before),
            "--out",
            &path_s(file),
        ]);
        assert_eq!(code, 0, "{stdout}{stderr}");
    }
    let fed_dir = fed.federation_dir();
    std::fs::write(out.join("ca.der"), fed.pki.ca_cert_der()).unwrap();
    std::fs::copy(fed_dir.join("directory.json"), out.join("directory.json")).unwrap();
    let ca_key_pem = std::fs::read(fed_dir.join("ca.key")).unwrap();
    let ca_key = match rustls_pemfile::private_key(&mut ca_key_pem.as_slice()).unwrap() {
        Some(rustls_pki_types::PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
        other => panic!("ca.key: {other:?}"),
    };
    std::fs::write(out.join("ca.key.der"), ca_key).unwrap();
    for id in [fuzz::LOG, fuzz::RECEIVER] {
        let key =
            pki_tools::keys::load_ed25519_pkcs8(&fed.nodes[id].dir.join("signing.key")).unwrap();
        std::fs::write(out.join(format!("{id}.signing.der")), key.as_slice()).unwrap();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(out.join("now"), format!("{now}\n")).unwrap();
    for name in fuzz::SEED_FILES {
        assert!(out.join(name).exists(), "{name}");
    }

    let w = World::load(&out).unwrap();
    assert_eq!(
        fuzz::keys_of(&w, fuzz::LOG),
        vec![w.log_key.verifying_key()]
    );
    let inputs = w.seed_inputs();
    for target in fuzz::TARGETS {
        assert!(
            inputs.iter().any(|(t, _, _)| t == target),
            "no seed for {target}"
        );
    }
    for (target, name, bytes) in &inputs {
        let verified = run(&w, target, name, bytes);
        assert!(verified.is_ok(), "{target}/{name}: {verified:?}");
    }
    let account = fuzz::evidence_file(&w, &w.evidence).unwrap();
    assert!(
        account.contains(&format!("Evidence for transfer {id}: VERIFIED")),
        "{account}"
    );
    if update {
        let corpus = fuzz_dir().join("corpus");
        let _ = std::fs::remove_dir_all(&corpus);
        for (target, name, bytes) in &inputs {
            std::fs::create_dir_all(corpus.join(target)).unwrap();
            std::fs::write(corpus.join(target).join(name), bytes).unwrap();
        }
    }
}
