//! Mutual TLS with enrollment, on real processes: `p2p init` makes the CA,
//! a tracker serves only TLS, four nodes join with one-time tokens, a
//! person logs in, and a put and a get go through. Callers without a
//! certificate of the cluster, with one from another CA, or with a used or
//! expired token are refused, and change nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use p2p_tests::{free_addr, p2p_bin, random_file, same_bytes};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `p2p ARGS` as the person whose credentials are in `user`, with no
/// tracker given (enrollment noted it).
fn p2p(user: &Path, args: &[&str]) -> Output {
    Command::new(p2p_bin())
        .args(args)
        .env("P2P_CONFIG", user)
        .env_remove("P2P_TRACKER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run p2p")
}

fn ok(user: &Path, args: &[&str]) -> String {
    let out = p2p(user, args);
    assert!(
        out.status.success(),
        "p2p {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A refusal: exit non-zero with one line on stderr containing `needle`.
fn refused(user: &Path, args: &[&str], needle: &str) {
    let out = p2p(user, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "p2p {args:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

/// `p2p login TOKEN` into `user`; the id it printed ("enrolled as client
/// ID; ...").
fn login(user: &Path, token: &str) -> String {
    let who = ok(user, &["login", token]);
    who.split_whitespace()
        .nth(3)
        .expect("an id in the login line")
        .trim_end_matches(';')
        .to_string()
}

fn spawn(args: &[&str], log: PathBuf, user: &Path) -> Proc {
    let f = std::fs::File::create(log).expect("log");
    Proc(
        Command::new(p2p_bin())
            .args(args)
            .env("P2P_CONFIG", user)
            .env_remove("P2P_TRACKER")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("spawn p2p"),
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn token(tdata: &Path, role: &str, ttl: &str) -> String {
    ok(
        Path::new("/nonexistent"),
        &[
            "token",
            "--data",
            tdata.to_str().unwrap(),
            "--role",
            role,
            "--ttl",
            ttl,
        ],
    )
    .trim()
    .to_string()
}

#[test]
fn enrolled_cluster_serves_only_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tdata = d.join("tracker");
    let user = d.join("user");
    let nobody = d.join("nobody");
    let init = ok(&nobody, &["init", "--data", tdata.to_str().unwrap()]);
    assert!(init.contains("pin"), "{init}");
    for f in ["ca.pem", "ca-key.pem", "token-key"] {
        assert!(tdata.join("tls").join(f).exists(), "{f}");
    }
    // A second init would replace the cluster's identity: refused.
    refused(
        &nobody,
        &["init", "--data", tdata.to_str().unwrap()],
        "already exists",
    );

    let taddr = free_addr();
    let _tracker = spawn(
        &[
            "tracker",
            "--listen",
            &taddr,
            "--data",
            tdata.to_str().unwrap(),
            "--heartbeat",
            "200ms",
            "--dead-after",
            "2s",
        ],
        d.join("tracker.log"),
        &nobody,
    );
    wait_for(
        "the tracker to note its address",
        Duration::from_secs(20),
        || tdata.join("tls").join("trackers").exists(),
    );

    let mut nodes = Vec::new();
    let mut node_dirs = Vec::new();
    for i in 0..4 {
        let data = d.join(format!("node{i}"));
        let t = token(&tdata, "node", "10m");
        let addr = free_addr();
        nodes.push(spawn(
            &[
                "node",
                "--listen",
                &addr,
                "--data",
                data.to_str().unwrap(),
                "--join",
                &t,
                "--heartbeat",
                "200ms",
                "--no-shell",
            ],
            d.join(format!("node{i}.log")),
            &nobody,
        ));
        node_dirs.push((addr, data));
    }
    let client_token = token(&tdata, "client", "10m");
    let said = ok(&user, &["login", &client_token]);
    assert!(said.contains("enrolled as client"), "{said}");
    for f in ["ca.pem", "cert.pem", "key.pem", "trackers"] {
        assert!(user.join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(user.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let alive = |user: &Path| -> usize {
        let out = p2p(user, &["status", "--json"]);
        if !out.status.success() {
            return 0;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["alive"] == true)
            .count()
    };
    wait_for("4 enrolled nodes", Duration::from_secs(30), || {
        alive(&user) == 4
    });
    for (_, data) in &node_dirs {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            assert!(data.join("tls").join(f).exists(), "{f}");
        }
    }

    // A put and a get over mutual TLS, node to node included.
    let input = d.join("in.bin");
    random_file(&input, 9 * 1024 * 1024 + 5, 11).unwrap();
    ok(&user, &["put", input.to_str().unwrap(), "--name", "f"]);
    let out = d.join("out.bin");
    ok(&user, &["get", "f", "-o", out.to_str().unwrap()]);
    assert!(same_bytes(&input, &out).unwrap());

    // The same token twice: refused, and nothing enrolled.
    let again = d.join("again");
    refused(&again, &["login", &client_token], "used already");
    assert!(!again.join("cert.pem").exists());
    // An expired token.
    let short = token(&tdata, "client", "1s");
    std::thread::sleep(Duration::from_millis(2100));
    refused(&again, &["login", &short], "expired");
    // A token altered (another role written in): refused.
    let forged = token(&tdata, "client", "10m").replacen(".client.", ".admin.", 1);
    refused(&again, &["login", &forged], "not issued by this cluster");
    assert!(!again.join("cert.pem").exists());

    // Callers from outside, over a plain gRPC stack: without a
    // certificate, and with one from another CA.
    let ca_pem = std::fs::read_to_string(user.join("ca.pem")).unwrap();
    let other = d.join("other");
    let other_ca = p2p_net::tls::Ca::init(&other).unwrap();
    let foreign = other_ca
        .tracker_credentials(&["127.0.0.1:1".into()])
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let list = |tls: ClientTlsConfig| {
            let taddr = taddr.clone();
            async move {
                let ch = Endpoint::from_shared(format!("https://{taddr}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await;
                let ch = match ch {
                    Ok(ch) => ch,
                    Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
                };
                p2p_proto::tracker_client::TrackerClient::new(ch)
                    .list(p2p_proto::ListRequest::default())
                    .await
            }
        };
        let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
        let s = list(no_cert).await.expect_err("no certificate: refused");
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("enroll"), "{s:?}");
        let wrong_ca = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&foreign.cert_pem, &foreign.key_pem));
        assert!(
            list(wrong_ca).await.is_err(),
            "a certificate of another CA was accepted"
        );
        // A node's certificate used to heartbeat as another node, and to
        // list files: refused.
        let node_tls = |i: usize| {
            let t = node_dirs[i].1.join("tls");
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(
                    std::fs::read_to_string(t.join("ca.pem")).unwrap(),
                ))
                .identity(Identity::from_pem(
                    std::fs::read_to_string(t.join("cert.pem")).unwrap(),
                    std::fs::read_to_string(t.join("key.pem")).unwrap(),
                ))
        };
        let node_id = |i: usize| std::fs::read_to_string(node_dirs[i].1.join("node-id")).unwrap();
        let ch = Endpoint::from_shared(format!("https://{taddr}"))
            .unwrap()
            .tls_config(node_tls(0))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut as_node0 = p2p_proto::tracker_client::TrackerClient::new(ch);
        let s = as_node0
            .heartbeat(p2p_proto::HeartbeatRequest {
                node_id: node_id(1).trim().to_string(),
                ..Default::default()
            })
            .await
            .expect_err("heartbeat as another node");
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("may not speak for node"), "{s:?}");
        let s = as_node0
            .list(p2p_proto::ListRequest::default())
            .await
            .expect_err("a node lists files");
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        // Plaintext to a TLS port: no answer.
        let plain = Endpoint::from_shared(format!("http://{taddr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await;
        if let Ok(ch) = plain {
            assert!(
                p2p_proto::tracker_client::TrackerClient::new(ch)
                    .list(p2p_proto::ListRequest::default())
                    .await
                    .is_err()
            );
        }
    });
    // Nothing the refused callers did changed the cluster.
    let ls: serde_json::Value = serde_json::from_str(&ok(&user, &["ls", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");

    // A node restarts from its kept credentials, with no token.
    drop(nodes.remove(0));
    wait_for(
        "the tracker to see the node gone",
        Duration::from_secs(20),
        || alive(&user) == 3,
    );
    let (addr, data) = node_dirs[0].clone();
    let _back = spawn(
        &[
            "node",
            "--listen",
            &addr,
            "--data",
            data.to_str().unwrap(),
            "--heartbeat",
            "200ms",
            "--no-shell",
        ],
        d.join("node0.restart.log"),
        &nobody,
    );
    wait_for(
        "the node back without a token",
        Duration::from_secs(30),
        || alive(&user) == 4,
    );
    ok(&user, &["get", "f", "-o", out.to_str().unwrap()]);
    assert!(same_bytes(&input, &out).unwrap());

    // Revoking a person's certificate: the tracker refuses it within a
    // second, and the nodes (told on heartbeats) refuse its chunk reads.
    let victim = d.join("victim");
    let victim_id = login(&victim, &token(&tdata, "client", "10m"));
    ok(&victim, &["ls"]);
    ok(
        &nobody,
        &["revoke", "--data", tdata.to_str().unwrap(), &victim_id],
    );
    wait_for(
        "the tracker to refuse the revoked",
        Duration::from_secs(10),
        || !p2p(&victim, &["ls"]).status.success(),
    );
    refused(&victim, &["ls"], "revoked");
    let victim_creds = p2p_net::tls::Credentials::load(&victim).unwrap().unwrap();
    let some_node = node_dirs[1].0.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node_refuses = || {
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{some_node}"))
                .unwrap()
                .tls_config(victim_creds.client())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let s = p2p_proto::node_client::NodeClient::new(ch)
                .ping(p2p_proto::PingRequest::default())
                .await;
            matches!(s, Err(ref s) if s.code() == tonic::Code::PermissionDenied)
        })
    };
    wait_for(
        "a node to refuse the revoked",
        Duration::from_secs(10),
        node_refuses,
    );
    // Everyone else is unaffected.
    ok(&user, &["ls"]);

    // Making a node leave takes an admin: a client is refused, an admin
    // is obeyed.
    let leaving = node_dirs[3].0.clone();
    refused(&user, &["leave", "--node", &leaving], "admin");
    let admin = d.join("admin");
    ok(&admin, &["login", &token(&tdata, "admin", "10m")]);
    ok(&admin, &["leave", "--node", &leaving]);
    wait_for("the node to leave", Duration::from_secs(30), || {
        alive(&user) == 3
    });
    ok(&user, &["get", "f", "-o", out.to_str().unwrap()]);
    assert!(same_bytes(&input, &out).unwrap());

    // Revoking a node: the tracker refuses its next heartbeat (its own
    // certificate, its own id: "revoked"), so it is soon counted dead.
    let (_, revoked_data) = node_dirs[1].clone();
    let revoked_id = std::fs::read_to_string(revoked_data.join("node-id"))
        .unwrap()
        .trim()
        .to_string();
    let revoked_creds = p2p_net::tls::Credentials::load(&revoked_data.join("tls"))
        .unwrap()
        .unwrap();
    ok(
        &nobody,
        &["revoke", "--data", tdata.to_str().unwrap(), &revoked_id],
    );
    let tracker_refuses_node = || {
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{taddr}"))
                .unwrap()
                .tls_config(revoked_creds.client())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let s = p2p_proto::tracker_client::TrackerClient::new(ch)
                .heartbeat(p2p_proto::HeartbeatRequest {
                    node_id: revoked_id.clone(),
                    ..Default::default()
                })
                .await;
            matches!(s, Err(ref s) if s.code() == tonic::Code::PermissionDenied
                && s.message().contains("revoked"))
        })
    };
    wait_for(
        "the tracker to refuse the revoked node",
        Duration::from_secs(10),
        tracker_refuses_node,
    );
    wait_for(
        "the revoked node to count as dead",
        Duration::from_secs(10),
        || alive(&user) == 2,
    );
}

// A revocation written on one tracker's host (a follower's, or the
// leader's) reaches the whole group through its log: after the leader that
// took it is killed, the new leader still refuses the certificate, and so
// do the nodes.
#[test]
fn a_revocation_is_replicated_through_the_tracker_group() {
    let mut c = p2p_tests::Cluster::start_group_tls(3, 3).expect("start a TLS tracker group");
    let d = c.dir.path().to_path_buf();
    let victim = d.join("victim");
    let victim_id = login(&victim, &c.token("client").expect("a client token"));
    ok(&victim, &["ls"]);
    let leader = c.leader().expect("a leader");
    // Written on a host whose tracker does not lead.
    let host = (leader + 1) % 3;
    ok(
        &d.join("user"),
        &[
            "revoke",
            "--data",
            c.member_data(host).to_str().unwrap(),
            &victim_id,
        ],
    );
    wait_for(
        "the group to refuse the revoked",
        Duration::from_secs(15),
        || !p2p(&victim, &["ls"]).status.success(),
    );
    refused(&victim, &["ls"], "revoked");
    // The leader goes; another takes over from the replicated records.
    c.kill_member(leader);
    wait_for("a new leader", Duration::from_secs(30), || {
        c.leader().is_some_and(|l| l != leader)
    });
    ok(&d.join("user"), &["ls"]);
    refused(&victim, &["ls"], "revoked");
}
