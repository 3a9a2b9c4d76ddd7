//! A file's life on real processes: rm then put the same bytes again at
//! once, replacing a name under concurrent readers, a get killed half-way
//! and resumed, and a node whose disk fills up during a put.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p2p_tests::{Cluster, p2p_bin, random_file, same_bytes};

const MIB: usize = 1 << 20;
const CHUNK: u64 = 4 << 20;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("valid JSON")
}

// The session a new user tried, which failed before: a put right after an
// rm of the same bytes, and a put of bytes stored and removed earlier under
// another name. Then: a put of other bytes under an existing name is
// refused with the hint, and `--replace` replaces it.
#[test]
fn put_right_after_rm_and_replace() {
    let c = Cluster::start(4).unwrap();
    let a = c.path("a.bin");
    let b = c.path("b.bin");
    random_file(&a, 9 * MIB + 7, 1).unwrap();
    random_file(&b, 13 * MIB + 1, 2).unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    c.p2p_ok(&["put", b_s, "--name", "y"]).unwrap();
    c.p2p_ok(&["rm", "y"]).unwrap();
    c.p2p_ok(&["put", a_s, "--name", "x"]).unwrap();
    c.p2p_ok(&["rm", "x"]).unwrap();
    c.p2p_ok(&["put", a_s, "--name", "x"]).unwrap();
    c.p2p_ok(&["rm", "x"]).unwrap();
    c.p2p_ok(&["put", b_s, "--name", "x"]).unwrap();
    let out = c.path("x.out");
    c.p2p_ok(&["get", "x", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&b, &out).unwrap());

    let refused = c.p2p(&["put", a_s, "--name", "x"]).unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );
    // Refused before a byte moved: no chunk of `a` is on any node.
    c.wait_until("the earlier deletions", Duration::from_secs(10), |c| {
        let a_hex: Vec<String> = std::fs::read(&a)
            .unwrap()
            .chunks(CHUNK as usize)
            .map(|p| blake3::hash(p).to_hex().to_string())
            .collect();
        Ok(c.nodes
            .iter()
            .all(|n| a_hex.iter().all(|h| !n.holds_intact(h))))
    })
    .unwrap();

    c.p2p_ok(&["put", a_s, "--name", "x", "--replace"]).unwrap();
    c.p2p_ok(&["get", "x", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&a, &out).unwrap());
    let ls = json(&c.p2p_ok(&["ls", "--json"]).unwrap());
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls[0]["size"], (9 * MIB + 7) as u64);
}

// Replacing a file while 10 readers read it in a loop: every read returns
// the old bytes or the new ones, whole; none fails; and readers see the new
// version once the replace returned.
#[test]
fn replace_under_ten_concurrent_readers() {
    let c = Arc::new(Cluster::start(4).unwrap());
    let old = c.path("old.bin");
    let new = c.path("new.bin");
    random_file(&old, 6 * MIB + 3, 3).unwrap();
    random_file(&new, 10 * MIB + 5, 4).unwrap();
    c.p2p_ok(&["put", old.to_str().unwrap(), "--name", "doc"])
        .unwrap();
    let old_bytes = Arc::new(std::fs::read(&old).unwrap());
    let new_bytes = Arc::new(std::fs::read(&new).unwrap());
    let replaced = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..10)
        .map(|r| {
            let (c, old_bytes, new_bytes, replaced) = (
                c.clone(),
                old_bytes.clone(),
                new_bytes.clone(),
                replaced.clone(),
            );
            std::thread::spawn(move || {
                let out = c.path(&format!("read{r}.out"));
                let (mut olds, mut news, mut after) = (0, 0, 0);
                // Read until three reads started after the replace returned.
                while after < 3 {
                    let started_after = replaced.load(Ordering::SeqCst);
                    c.p2p_ok(&["get", "doc", "-o", out.to_str().unwrap()])
                        .unwrap_or_else(|e| panic!("reader {r}: {e}"));
                    let got = std::fs::read(&out).unwrap();
                    if got == *old_bytes {
                        assert!(
                            !started_after,
                            "reader {r} read the old version after the replace"
                        );
                        olds += 1;
                    } else if got == *new_bytes {
                        news += 1;
                    } else {
                        panic!("reader {r} read {} bytes of neither version", got.len());
                    }
                    after += usize::from(started_after);
                }
                (olds, news)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    c.p2p_ok(&["put", new.to_str().unwrap(), "--name", "doc", "--replace"])
        .unwrap();
    replaced.store(true, Ordering::SeqCst);
    let (mut olds, mut news) = (0, 0);
    for r in readers {
        let (o, n) = r.join().unwrap();
        olds += o;
        news += n;
    }
    eprintln!("reads: {olds} of the old version, {news} of the new");
    assert!(olds > 0 && news >= 30, "olds {olds}, news {news}");
}

/// Blocks the file at `path` occupies on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".p2p-part"))
        .collect()
}

// A get of 200 MiB SIGKILLed at about half leaves its temporary file; run
// again, it keeps every chunk verified there and fetches at most the
// missing half plus one chunk per parallel fetch (8), counted in bytes
// received; the output is byte-identical and the temporary file is gone.
#[test]
fn get_killed_half_way_resumes() {
    let c = Cluster::start(4).unwrap();
    let input = c.path("big.bin");
    let size = 200 * MIB as u64;
    random_file(&input, size as usize, 5).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap(), "--name", "big"])
        .unwrap();
    let outdir = c.path("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("big.out");
    let mut get = Command::new(p2p_bin())
        .args(["get", "big", "-o", out.to_str().unwrap()])
        .env("P2P_TRACKER", c.tracker_url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let written = loop {
        let parts = part_files(&outdir);
        let w = parts.first().map_or(0, |p| allocated(p));
        if w >= size / 2 {
            break w;
        }
        assert!(
            get.try_wait().unwrap().is_none(),
            "the get ended before half"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the get is stuck"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    get.kill().unwrap();
    get.wait().unwrap();
    assert!(!out.exists());
    assert_eq!(part_files(&outdir).len(), 1, "the partial download is kept");

    let r = json(
        &c.p2p_ok(&["get", "big", "-o", out.to_str().unwrap(), "--json"])
            .unwrap(),
    );
    let (reused, fetched) = (
        r["reused"].as_u64().unwrap(),
        r["fetched"].as_u64().unwrap(),
    );
    eprintln!(
        "killed with {} MiB on disk; resumed: reused {} MiB, fetched {} MiB",
        written >> 20,
        reused >> 20,
        fetched >> 20
    );
    assert!(reused >= size / 2 - 8 * CHUNK, "reused only {reused}");
    assert!(
        fetched <= size / 2 + 8 * CHUNK,
        "fetched {fetched}: more than the missing half plus one chunk per fetch"
    );
    assert_eq!(
        reused + fetched,
        size,
        "every byte either reused or fetched once"
    );
    assert!(same_bytes(&input, &out).unwrap());
    assert!(part_files(&outdir).is_empty());

    // A leftover of another version of this output is swept by the next get.
    let stale = outdir.join(".big.out.0123456789abcdef.p2p-part");
    std::fs::write(&stale, b"partial").unwrap();
    c.p2p_ok(&["get", "big", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(!stale.exists());
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount (this test needs root, as CI has)");
        assert!(
            ok.success(),
            "mount a tmpfs at {} (needs root)",
            at.display()
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// A node on a 12 MiB disk (it offers what the disk has free, less a
// twentieth) takes what fits of a 200 MiB put and no more: the tracker
// places nothing past its room, and the put succeeds on the others and
// reads back intact. Then its disk fills behind its back: a put that needs
// it fails with one line (the tracker heard of it: no room; or not yet:
// the node refuses the upload), and the node keeps no temporary file (nor
// after a restart).
#[test]
fn node_with_a_full_disk_leaves_no_litter() {
    let mut c = Cluster::start(4).unwrap();
    let small = Tmpfs::mount(c.path("small"), "12m");
    let i = c.add_node_at(small.0.clone()).unwrap();
    c.wait_alive(5).unwrap();
    let input = c.path("big.bin");
    random_file(&input, 200 * MIB, 6).unwrap();
    let r = json(
        &c.p2p_ok(&["put", input.to_str().unwrap(), "--name", "big", "--json"])
            .unwrap(),
    );
    eprintln!("put: {r}");
    let tmp_files = |c: &Cluster| {
        std::fs::read_dir(c.nodes[i].data.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(tmp_files(&c), 0, "temporary files left on the full node");
    let held = c.nodes[i].chunk_files().len();
    assert!(
        (1..=2).contains(&held),
        "the 12 MiB node holds {held} 4 MiB chunks"
    );
    let out = c.path("big.out");
    c.p2p_ok(&["get", "big", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    // The disk fills behind the node's back.
    let (free, _) = p2p_net::store::statvfs(&small.0).unwrap();
    std::fs::write(
        small.0.join("junk"),
        vec![0u8; (free - 256 * 1024) as usize],
    )
    .unwrap();
    let more = c.path("more.bin");
    random_file(&more, 8 * MIB, 7).unwrap();
    let out = c
        .p2p(&["put", more.to_str().unwrap(), "--replicas", "5"])
        .unwrap();
    assert!(!out.status.success(), "a put onto a full disk succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no room") || err.contains("full"), "{err}");
    assert_eq!(tmp_files(&c), 0, "temporary files left on the full node");
    // A node clears its temporary directory when it starts.
    std::fs::write(c.nodes[i].data.join("tmp").join("junk.0.tmp"), b"x").unwrap();
    c.kill_node(i);
    c.restart_node(i).unwrap();
    // Nothing else removes it: the node clears its temporary directory
    // when it opens its store.
    c.wait_until(
        "the restarted node to clear tmp/",
        Duration::from_secs(20),
        |c| Ok(tmp_files(c) == 0),
    )
    .unwrap();
    drop(c);
    drop(small);
}
