//! Snapshots of what people read: the CLI's help and the human and JSON
//! forms of `ls` and `status`.

use std::process::Command;

use p2p_cli::output;
use p2p_proto as pb;

fn p2p(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_p2p"))
        .args(args)
        .env_remove("P2P_TRACKER")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// The top-level help lists every subcommand of the contract.
#[test]
fn help_lists_commands() {
    insta::assert_snapshot!(p2p(&["--help"]));
}

// The node's flags, including the shell/daemon switch.
#[test]
fn node_help() {
    insta::assert_snapshot!(p2p(&["node", "--help"]));
}

fn sample_status() -> pb::StatusResponse {
    pb::StatusResponse {
        nodes: vec![
            pb::NodeStatus {
                id: "a1b2c3d4e5f60718".into(),
                addr: "127.0.0.1:7001".into(),
                alive: true,
                leaving: false,
                chunks: 11,
                last_seen_ms_ago: 120,
                zone: "rack-1".into(),
                space: Some(pb::DiskSpace {
                    used: 11 << 22,
                    capacity: 10 << 30,
                }),
            },
            pb::NodeStatus {
                id: "ffeeddccbbaa9988".into(),
                addr: "127.0.0.1:7002".into(),
                alive: false,
                leaving: false,
                chunks: 7,
                last_seen_ms_ago: 15_000,
                zone: "ffeeddccbbaa9988".into(),
                space: None,
            },
        ],
        files: 1,
        chunks: 11,
        under_replicated: 7,
        lost: 0,
        repair_queue: 3,
        repairs_in_flight: 4,
        deletes_pending: 0,
        at_risk: vec![sample_file(2)],
        at_risk_total: 3,
        trackers: vec![
            pb::TrackerMember {
                addr: "10.0.0.1:50051".into(),
                role: "leader".into(),
                applied: 42,
            },
            pb::TrackerMember {
                addr: "10.0.0.2:50051".into(),
                role: "follower".into(),
                applied: 42,
            },
            pb::TrackerMember {
                addr: "10.0.0.3:50051".into(),
                role: "unreachable".into(),
                applied: 17,
            },
        ],
        warnings: vec![
            "if node a1b2c3d4e5f60718 (44.0 MiB) died, the others would have only 0 B free to restore its copies".into(),
        ],
    }
}

fn sample_file(min_copies: u32) -> pb::FileInfo {
    pb::FileInfo {
        name: "big.bin".into(),
        size: 41_955_785,
        replicas: 3,
        chunks: 11,
        manifest_hash: vec![0xab; 32].into(),
        under_replicated: 7,
        min_copies,
        lost: 0,
    }
}

// `status` for a person and for a machine (the JSON keys are a contract).
#[test]
fn status_formats() {
    let s = sample_status();
    insta::assert_snapshot!(output::status_text(&s));
    insta::assert_snapshot!(serde_json::to_string_pretty(&output::status_json(&s)).unwrap());
}

// `status --what-if` for a person and for a machine.
#[test]
fn what_if_formats() {
    let w = pb::WhatIfResponse {
        lost: vec!["a.bin".into()],
        at_risk: vec!["b.bin".into(), "c.bin".into()],
    };
    let nodes = vec!["127.0.0.1:7001".to_string(), "ffeeddccbbaa9988".to_string()];
    insta::assert_snapshot!(output::what_if_text(&nodes, &w));
    insta::assert_snapshot!(serde_json::to_string_pretty(&output::what_if_json(&w)).unwrap());
    let none = pb::WhatIfResponse::default();
    insta::assert_snapshot!(output::what_if_text(&nodes[..1], &none));
}

// Sizes as `--capacity` takes them, and the mistakes it refuses.
#[test]
fn sizes_parse() {
    assert_eq!(output::parse_size("123"), Ok(123));
    assert_eq!(output::parse_size("2K"), Ok(2048));
    assert_eq!(output::parse_size("500MiB"), Ok(500 << 20));
    assert_eq!(output::parse_size("1G"), Ok(1 << 30));
    assert_eq!(output::parse_size("3TB"), Ok(3_000_000_000_000));
    assert_eq!(output::parse_size("10 MB"), Ok(10_000_000));
    assert!(output::parse_size("").is_err());
    assert!(output::parse_size("MiB").is_err());
    assert!(output::parse_size("5 parsecs").is_err());
    assert!(output::parse_size("99999999999T").is_err());
    assert_eq!(output::parse_zone("rack-1"), Ok("rack-1".to_string()));
    assert!(output::parse_zone("").is_err());
    assert!(output::parse_zone(&"z".repeat(65)).is_err());
}

// `ls` for a person and for a machine.
#[test]
fn ls_formats() {
    let mut gone = sample_file(0);
    gone.name = "gone.bin".into();
    gone.lost = 1;
    let mut fine = sample_file(3);
    fine.name = "fine.bin".into();
    fine.under_replicated = 0;
    let files = vec![sample_file(2), fine, gone];
    insta::assert_snapshot!(output::ls_text(&files));
    insta::assert_snapshot!(serde_json::to_string_pretty(&output::ls_json(&files)).unwrap());
    insta::assert_snapshot!(output::ls_text(&[]));
}

// `ls` streams page by page and prints exactly what one page of everything
// would: the same table, the same JSON.
#[test]
fn ls_streams_in_pages_with_the_same_output() {
    let files: Vec<_> = (0..5)
        .map(|i| {
            let mut f = sample_file(i % 3);
            f.name = format!("f{i}.bin");
            f
        })
        .collect();
    for n in [0, 1, 5] {
        let all = &files[..n];
        for json in [false, true] {
            let mut w = output::LsWriter::new(Vec::new(), json);
            for page in all.chunks(2) {
                w.page(page).unwrap();
            }
            let got = String::from_utf8(w.finish().unwrap()).unwrap();
            let want = if json {
                serde_json::to_string_pretty(&output::ls_json(all)).unwrap()
            } else {
                output::ls_text(all)
            };
            assert_eq!(got, format!("{want}\n"), "{n} files, json {json}");
        }
    }
}

// The secure default: a tracker or node without TLS refuses a non-loopback
// address, with one line naming both ways out; loopback stays open.
#[test]
fn plaintext_on_an_open_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["tracker", "--listen", "0.0.0.0:0", "--data"],
        vec!["node", "--no-shell", "--listen", "0.0.0.0:0", "--data"],
    ] {
        let data = dir.path().join(args[0]);
        let mut args = args.clone();
        args.push(data.to_str().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_p2p"))
            .args(&args)
            .env_remove("P2P_TRACKER")
            .env("P2P_CONFIG", dir.path().join("user"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} served plaintext");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("refusing to serve plaintext") && err.contains("--insecure"),
            "{err}"
        );
        assert!(!data.join("tracker.redb").exists(), "it opened its data");
    }
}
