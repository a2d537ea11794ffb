//! Envelopes the real sender never makes, posted over a real mutual-TLS connection with
//! hosp-a's genuine identity: each is refused with a status and an audited reason naming the
//! problem, and nothing reaches the inbox.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::Value;

use gateway_envelope::{SignedReceipt, SigningKey, TransferId, VerifyingKey};
use pki_tools::{FacilityFile, FacilityKind};
use tests::{raw_peer_post, Fed, Node, RawIdentity};

use common::{add_config_line, ca_pem, encryption_key, seal, seal_at, signing_key, wait_rejection};

const PATH: &str = "/v1/envelopes";

/// What hosp-a needs to seal its own envelopes to clinic-b and post them to clinic-b's peer
/// port under hosp-a's genuine TLS identity.
struct FromA {
    ca: Vec<u8>,
    ident: RawIdentity,
    signer: SigningKey,
    to_b: gateway_envelope::EncryptionPublicKey,
}

impl FromA {
    fn new(fed: &Fed) -> FromA {
        let a_dir = &fed.nodes["hosp-a"].dir;
        FromA {
            ca: ca_pem(fed),
            ident: RawIdentity::from_node_dir(a_dir),
            signer: signing_key(a_dir),
            to_b: encryption_key(&fed.nodes["clinic-b"].dir),
        }
    }
}

/// What a node's spool holds (`inbox` or `outbox`): its files' names (partial ones too) and
/// the transfer ids of the records in its segments.
fn spool_files(node_dir: &std::path::Path, kind: &str) -> Vec<String> {
    tests::spooled(&node_dir.join("data"), kind)
}

fn inbox_ids(inbox: &[Value]) -> Vec<String> {
    inbox
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the receiver audited a refusal of transfer `id` whose reason contains `needle`.
async fn assert_refusal_audited(node: &Node, id: &TransferId, needle: &str) {
    let hex = id.to_string();
    let entry = wait_rejection(node, Duration::from_secs(10), |e| {
        e["transfer_id"] == hex.as_str()
    })
    .await;
    assert_eq!(entry["outcome"], "refused", "{entry}");
    assert_eq!(entry["peer"], "hosp-a", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(needle),
        "reason {reason:?} does not mention {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_replayed_and_truncated_envelopes_are_refused_and_audited() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let b = fed.start("clinic-b");
    let b_dir = &fed.nodes["clinic-b"].dir;
    let FromA {
        ca,
        ident,
        signer,
        to_b,
    } = FromA::new(&fed);
    let b_verifying = VerifyingKey(
        FacilityFile::load(&b_dir.join("facility.json"))
            .unwrap()
            .signing_public_key,
    );
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let post = |body: Vec<u8>| raw_peer_post(b.dir.peer, &ca, &ident, PATH, body);

    // Control: a well-formed envelope is accepted with a receipt signed by clinic-b, so every
    // refusal below is caused by the one thing each case breaks.
    let good_id = TransferId::new_random().unwrap();
    let good = seal(good_id, "hosp-a", "clinic-b", &signer, &to_b, &payload);
    let (status, receipt) = post(good.clone()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&receipt));
    let verified = SignedReceipt::from_bytes(&receipt)
        .unwrap()
        .verify(&[b_verifying])
        .unwrap();
    assert_eq!(verified.transfer_id, good_id);
    assert_eq!(verified.payload_digest, gateway_envelope::sha256(&payload));
    assert_eq!(inbox_ids(&b.inbox().await), vec![good_id.to_string()]);

    // Replay: the same bytes again → 409 with the original receipt, nothing new stored.
    let (status, again) = post(good.clone()).await.unwrap();
    assert_eq!(status, 409);
    assert_eq!(
        again, receipt,
        "a replay must get the original receipt back"
    );
    let dup = wait_rejection(&b, Duration::from_secs(10), |e| {
        e["transfer_id"] == good_id.to_string().as_str() && e["outcome"] == "duplicate"
    })
    .await;
    assert!(dup["reason"].as_str().unwrap().contains("replay"), "{dup}");

    // Tampered ciphertext: one bit of the last payload frame flipped.
    let id = TransferId::new_random().unwrap();
    let mut env = seal(id, "hosp-a", "clinic-b", &signer, &to_b, &payload);
    let at = env.len() - 5;
    env[at] ^= 0x01;
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "decrypt").await;

    // Tampered header: one bit of the signed payload digest flipped.
    let id = TransferId::new_random().unwrap();
    let mut env = seal(id, "hosp-a", "clinic-b", &signer, &to_b, &payload);
    let digest = gateway_envelope::sha256(&payload);
    let pos = env
        .windows(32)
        .position(|w| w == digest)
        .expect("payload digest in the header");
    env[pos] ^= 0x80;
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "signature").await;

    // Addressed to another facility (validly signed by hosp-a, sealed to clinic-b's key).
    let id = TransferId::new_random().unwrap();
    let env = seal(id, "hosp-a", "clinic-c", &signer, &to_b, &payload);
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "addressed to another facility").await;

    // Bad signature: claims hosp-a, signed with a key the directory does not list for it.
    let id = TransferId::new_random().unwrap();
    let stranger = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let env = seal(id, "hosp-a", "clinic-b", &stranger, &to_b, &payload);
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "signature").await;

    // Truncated: a valid envelope cut in the middle of its payload frames.
    let id = TransferId::new_random().unwrap();
    let env = seal(id, "hosp-a", "clinic-b", &signer, &to_b, &payload);
    let cut = env[..env.len() / 2 + 7].to_vec();
    let (status, text) = post(cut).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "truncated").await;

    // Impersonation: a genuine clinic-c envelope (signed with clinic-c's own key) sent over
    // hosp-a's TLS connection.
    let id = TransferId::new_random().unwrap();
    let c_signer = signing_key(&fed.nodes["clinic-c"].dir);
    let env = seal(id, "clinic-c", "clinic-b", &c_signer, &to_b, &payload);
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "sender does not match the TLS identity").await;

    // Stale: correctly signed, but created a week ago (outside the 6-day replay window).
    let id = TransferId::new_random().unwrap();
    let a_week_ago = common::now_ms() - 7 * 24 * 3600 * 1000;
    let env = seal_at(
        id, "hosp-a", "clinic-b", &signer, &to_b, &payload, a_week_ago,
    );
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "outside the accepted time window").await;

    // Future-dated: an hour ahead of the receiver's clock (beyond the allowed skew).
    let id = TransferId::new_random().unwrap();
    let in_an_hour = common::now_ms() + 3600 * 1000;
    let env = seal_at(
        id, "hosp-a", "clinic-b", &signer, &to_b, &payload, in_an_hour,
    );
    let (status, text) = post(env).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert_refusal_audited(&b, &id, "outside the accepted time window").await;

    // Nothing but the control envelope was stored (not even a partial spool file), and the
    // audit chain is intact.
    assert_eq!(inbox_ids(&b.inbox().await), vec![good_id.to_string()]);
    assert_eq!(spool_files(b_dir, "inbox"), vec![good_id.to_string()]);
    assert_eq!(b.fetch(&good_id.to_string()).await, payload);
    assert!(b.audit_verifies().await);
}

/// A sender that signs a payload digest its payload does not have is refused after the last
/// frame, for a small payload and a large one (written to the spool and written back while it
/// arrives), and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_digest_the_payload_does_not_match_is_refused_at_any_size() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let b = fed.start("clinic-b");
    let b_dir = &fed.nodes["clinic-b"].dir;
    let FromA {
        ca,
        ident,
        signer,
        to_b,
    } = FromA::new(&fed);
    for len in [20_000usize, 9 * 1024 * 1024 + 123] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut lie = gateway_envelope::sha256(&payload);
        lie[0] ^= 1;
        let id = TransferId::new_random().unwrap();
        let env = common::seal_claiming(
            id,
            "hosp-a",
            "clinic-b",
            &signer,
            &to_b,
            &payload,
            common::now_ms(),
            lie,
        );
        let (status, text) = raw_peer_post(b.dir.peer, &ca, &ident, PATH, env)
            .await
            .unwrap();
        assert_eq!(status, 400, "{len}: {}", String::from_utf8_lossy(&text));
        assert_refusal_audited(&b, &id, "digest").await;

        // The control: the same payload with its true digest is accepted.
        let id = TransferId::new_random().unwrap();
        let env = seal(id, "hosp-a", "clinic-b", &signer, &to_b, &payload);
        let (status, text) = raw_peer_post(b.dir.peer, &ca, &ident, PATH, env)
            .await
            .unwrap();
        assert_eq!(status, 200, "{len}: {}", String::from_utf8_lossy(&text));
    }
    assert_eq!(b.inbox().await.len(), 2, "only the two honest envelopes");
    assert_eq!(spool_files(b_dir, "inbox").len(), 2);
    assert!(b.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_change_nothing() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    add_config_line(&fed, "clinic-b", "peer", "max_envelope_bytes = 1000000");
    let b = fed.start("clinic-b");
    let ca = ca_pem(&fed);
    let ident = RawIdentity::from_node_dir(&fed.nodes["hosp-a"].dir);
    let audit_before = b.audit_without_reads().await.len();

    // Oversized: 2 MB against a 1 MB limit.
    let (status, text) = raw_peer_post(b.dir.peer, &ca, &ident, PATH, vec![0x42; 2_000_000])
        .await
        .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    let big = wait_rejection(&b, Duration::from_secs(10), |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("larger than this node accepts"))
    })
    .await;
    assert_eq!(big["peer"], "hosp-a");
    assert_eq!(big["outcome"], "refused");

    // Malformed: random bytes are not an envelope.
    let mut noise = vec![0u8; 4096];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
    let (status, text) = raw_peer_post(b.dir.peer, &ca, &ident, PATH, noise)
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let bad = wait_rejection(&b, Duration::from_secs(10), |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("malformed"))
    })
    .await;
    assert_eq!(bad["peer"], "hosp-a");

    // Exactly the two refusals were audited; nothing was stored.
    let audit = b.audit_without_reads().await;
    assert_eq!(audit.len(), audit_before + 2, "{audit:#?}");
    assert!(b.inbox().await.is_empty());
    assert!(spool_files(&fed.nodes["clinic-b"].dir, "inbox").is_empty());
    assert!(b.audit_verifies().await);
}
