//! Byte fuzzing of every decoder of wire and disk input: protobuf messages
//! to domain types (manifests, commits, repair orders, heartbeats), the
//! tracker's stored records and files, enrollment tokens and certificates.
//! Each gets random bytes and mutations of a valid encoding (so the fuzzer
//! gets past the first bytes); none may panic, and what decodes must
//! satisfy the domain's bounds.
//!
//! 100,000 inputs per decoder on every test run (about 3 s in all);
//! `P2P_FUZZ_CASES=N cargo test --release -p p2p-net --test fuzz` for more.

use p2p_core::tracker::Record;
use p2p_core::{ChunkId, Manifest, NodeId};
use p2p_net::convert;
use p2p_net::meta::{decode_records, decode_stored, encode_records, encode_stored};
use p2p_proto as pb;
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("P2P_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn manifest() -> Manifest {
    let data = vec![7u8; 10_000];
    let chunks: Vec<ChunkId> = data.chunks(4096).map(ChunkId::of).collect();
    Manifest {
        name: "some/file.bin".into(),
        size_bytes: data.len() as u64,
        chunk_size_bytes: 4096,
        replicas: 3,
        chunks,
    }
}

fn holders(m: &Manifest) -> Vec<Vec<NodeId>> {
    m.chunks
        .iter()
        .map(|_| {
            ["n1", "n2", "n3"]
                .iter()
                .map(|n| NodeId::new(*n).unwrap())
                .collect()
        })
        .collect()
}

/// Valid encodings to mutate, one per decoder.
fn valid_records() -> Vec<u8> {
    let m = manifest();
    let h = holders(&m);
    encode_records(&[
        Record::NodeJoined {
            id: NodeId::new("n1").unwrap(),
            addr: "10.0.0.1:7000".into(),
        },
        Record::FileCommitted {
            manifest: m,
            holders: h,
        },
        Record::FileRemoved { name: "x".into() },
        Record::TokenUsed {
            nonce: [1; 16],
            expires_unix_s: 5,
        },
        Record::Revoked { id: "n3".into() },
        Record::NodeLeft {
            id: NodeId::new("n2").unwrap(),
        },
    ])
}

fn valid_stored() -> Vec<u8> {
    let m = manifest();
    encode_stored(&m, &holders(&m)).encode_to_vec()
}

fn valid_commit() -> Vec<u8> {
    let m = manifest();
    p2p_net::meta::encode_commit(&m, &holders(&m)).encode_to_vec()
}

fn valid_heartbeat() -> Vec<u8> {
    pb::HeartbeatRequest {
        node_id: "n1".into(),
        added: convert::chunk_bytes(&manifest().chunks),
        removed: convert::chunk_bytes(&manifest().chunks[..1]),
        failed: vec![convert::handed_to_pb(
            &manifest().chunks[0],
            &NodeId::new("n2").unwrap(),
        )],
        session: 3,
        seq: 9,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Random bytes, or a valid encoding with a few bytes changed, cut short
/// or extended.
fn input(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            proptest::collection::vec((0..len.max(1), any::<u8>()), 1..8),
            0..=len,
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(move |(flips, cut, tail)| {
                let mut v = valid.clone();
                for (i, b) in flips {
                    if i < v.len() {
                        v[i] = b;
                    }
                }
                v.truncate(cut);
                v.extend(tail);
                v
            }),
    ]
}

fn check_manifest(m: &Manifest) {
    assert!(m.validate().is_ok(), "a decoded manifest is valid: {m:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    // The tracker group's log entries and snapshots.
    #[test]
    fn stored_records(bytes in input(valid_records())) {
        if let Ok(records) = decode_records(&bytes) {
            for r in records {
                if let Record::FileCommitted { manifest, holders } = r {
                    check_manifest(&manifest);
                    prop_assert_eq!(holders.len(), manifest.chunks.len());
                }
            }
        }
    }

    // A file as the tracker's redb keeps it.
    #[test]
    fn stored_files(bytes in input(valid_stored())) {
        if let Ok(f) = pb::StoredFile::decode(bytes.as_slice())
            && let Ok((manifest, holders)) = decode_stored(&f)
        {
            check_manifest(&manifest);
            prop_assert_eq!(holders.len(), manifest.chunks.len());
        }
    }

    // A client's commit.
    #[test]
    fn commits(bytes in input(valid_commit())) {
        // (A commit short of holders decodes: the tracker's core refuses
        // it, "not enough holders".)
        if let Ok(req) = pb::CommitRequest::decode(bytes.as_slice())
            && let Ok((manifest, _)) = p2p_net::meta::decode_commit(&req)
        {
            check_manifest(&manifest);
        }
    }

    // A manifest from a locate reply.
    #[test]
    fn manifests(bytes in input(convert::manifest_to_pb(&manifest()).encode_to_vec())) {
        if let Ok(m) = pb::Manifest::decode(bytes.as_slice())
            && let Ok(m) = convert::manifest_from_pb(&m)
        {
            check_manifest(&m);
        }
    }

    // A node's heartbeat, as the tracker reads it.
    #[test]
    fn heartbeats(bytes in input(valid_heartbeat())) {
        if let Ok(h) = pb::HeartbeatRequest::decode(bytes.as_slice()) {
            let _ = convert::node_id(&h.node_id);
            let _ = convert::chunk_ids(&h.added);
            let _ = convert::chunk_ids(&h.removed);
            let _ = convert::handed_from_pb(&h.failed);
            let _ = convert::handed_from_pb(&h.repaired);
        }
    }

    // A repair order, as a node reads it.
    #[test]
    fn repair_orders(bytes in input(convert::handoff_to_pb(&p2p_core::tracker::Handoff {
        chunk: manifest().chunks[0],
        size_bytes: 4096,
        target: p2p_core::tracker::NodeRef {
            id: NodeId::new("n2").unwrap(),
            addr: "10.0.0.2:7000".into(),
        },
    }).encode_to_vec())) {
        if let Ok(r) = pb::Replicate::decode(bytes.as_slice()) {
            let _ = convert::handoff_from_pb(&r);
        }
    }

    // Enrollment tokens, as a tracker checks them.
    #[test]
    fn tokens(bytes in input(p2p_core::enroll::Token {
        role: p2p_core::enroll::Role::Client,
        expires_unix_s: 10,
        nonce: [3; 16],
        pin: [4; 16],
        trackers: "10.0.0.1:50051".into(),
    }.sign(&[5; 32]).into_bytes())) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = p2p_core::enroll::Token::verify(&text, &[5; 32], 0);
    }

    // Certificates presented by peers: the role and identity read from them.
    #[test]
    fn certificates(bytes in input(cert_der())) {
        let _ = p2p_net::tls::identity_of(&bytes);
    }
}

fn cert_der() -> Vec<u8> {
    use std::sync::OnceLock;
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = p2p_net::tls::Ca::init(dir.path()).unwrap();
        let creds = ca.tracker_credentials(&["10.0.0.1:50051".into()]).unwrap();
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(creds.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    })
    .clone()
}
