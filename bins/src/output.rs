//! What the commands print: human tables, `--json`, progress bars.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
pub use p2p_core::tracker::human_bytes;
use p2p_net::client::{GetReport, Progress, PutReport};
use p2p_net::page::plural;
use p2p_proto as pb;
use serde_json::json;

/// A byte progress bar on a terminal; nothing when standard error is piped.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(label: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn put_text(r: &PutReport) -> String {
    let m = &r.manifest;
    format!(
        "stored {}: {} in {} chunks, {} replicas each (manifest {})",
        m.name,
        human_bytes(m.size_bytes),
        m.chunks.len(),
        m.replicas,
        &r.manifest_hash[..16.min(r.manifest_hash.len())]
    )
}

pub fn put_json(r: &PutReport) -> serde_json::Value {
    let m = &r.manifest;
    json!({
        "name": m.name,
        "size": m.size_bytes,
        "replicas": m.replicas,
        "chunks": m.chunks.len(),
        "manifest": r.manifest_hash,
        "retries": r.retries,
    })
}

pub fn get_text(r: &GetReport, out: &std::path::Path) -> String {
    let mut notes = String::new();
    if r.reused_bytes > 0 {
        notes += &format!(
            ", resumed: {} already here reused, {} fetched",
            human_bytes(r.reused_bytes),
            human_bytes(r.fetched_bytes)
        );
    }
    if r.retries > 0 {
        notes += &format!(", {} fetches retried elsewhere", r.retries);
    }
    format!(
        "wrote {} to {} ({}, {} chunks{notes})",
        r.manifest.name,
        out.display(),
        human_bytes(r.manifest.size_bytes),
        r.manifest.chunks.len(),
    )
}

fn file_json(f: &pb::FileInfo) -> serde_json::Value {
    json!({
        "name": f.name,
        "size": f.size,
        "replicas": f.replicas,
        "chunks": f.chunks,
        "manifest": hex::encode(&f.manifest_hash),
        "under_replicated": f.under_replicated,
        "min_copies": f.min_copies,
        "lost": f.lost,
    })
}

pub fn ls_json(files: &[pb::FileInfo]) -> serde_json::Value {
    files.iter().map(file_json).collect()
}

/// `ls` output written a page at a time, so a listing of any length
/// streams: the same text as [`ls_text`] (plus a final newline), or the
/// same JSON as [`ls_json`] pretty-printed.
pub struct LsWriter<W: std::io::Write> {
    out: W,
    json: bool,
    rows: u64,
}

impl<W: std::io::Write> LsWriter<W> {
    pub fn new(out: W, json: bool) -> Self {
        Self { out, json, rows: 0 }
    }

    pub fn page(&mut self, files: &[pb::FileInfo]) -> std::io::Result<()> {
        for f in files {
            if self.json {
                let item =
                    serde_json::to_string_pretty(&file_json(f)).expect("json values serialize");
                let item = item.replace('\n', "\n  ");
                let lead = if self.rows == 0 { "[\n  " } else { ",\n  " };
                write!(self.out, "{lead}{item}")?;
            } else {
                if self.rows == 0 {
                    writeln!(
                        self.out,
                        "{:<32} {:>12} {:>8} {:>8}  HEALTH",
                        "NAME", "SIZE", "REPLICAS", "CHUNKS"
                    )?;
                }
                writeln!(
                    self.out,
                    "{:<32} {:>12} {:>8} {:>8}  {}",
                    f.name,
                    human_bytes(f.size),
                    f.replicas,
                    f.chunks,
                    health(f)
                )?;
            }
            self.rows += 1;
        }
        self.out.flush()
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        match (self.json, self.rows) {
            (true, 0) => writeln!(self.out, "[]")?,
            (true, _) => writeln!(self.out, "\n]")?,
            (false, 0) => writeln!(self.out, "no files")?,
            (false, _) => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// How safe a file is, in a few words.
pub fn health(f: &pb::FileInfo) -> String {
    if f.lost > 0 {
        format!("UNREADABLE: {} chunks have no live copy", f.lost)
    } else if f.under_replicated > 0 {
        format!(
            "at risk: {}/{} copies, {} chunks under-replicated",
            f.min_copies, f.replicas, f.under_replicated
        )
    } else {
        "ok".to_string()
    }
}

pub fn ls_text(files: &[pb::FileInfo]) -> String {
    let mut w = LsWriter::new(Vec::new(), false);
    w.page(files).expect("writing to memory");
    let out = w.finish().expect("writing to memory");
    String::from_utf8(out)
        .expect("ls output is UTF-8")
        .trim_end()
        .to_string()
}

pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    json!({
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "addr": n.addr,
            "alive": n.alive,
            "leaving": n.leaving,
            "chunks": n.chunks,
            "last_seen_ms_ago": n.last_seen_ms_ago,
            "zone": n.zone,
            "used": n.space.as_ref().map(|s| s.used),
            "capacity": n.space.as_ref().map(|s| s.capacity),
        })).collect::<Vec<_>>(),
        "files": s.files,
        "chunks": s.chunks,
        "under_replicated": s.under_replicated,
        "lost": s.lost,
        "repair_queue": s.repair_queue,
        "repairs_in_flight": s.repairs_in_flight,
        "deletes_pending": s.deletes_pending,
        "at_risk": ls_json(&s.at_risk),
        "at_risk_total": s.at_risk_total,
        "trackers": s.trackers.iter().map(|t| json!({
            "addr": t.addr,
            "role": t.role,
            "applied": t.applied,
        })).collect::<Vec<_>>(),
        "warnings": s.warnings,
    })
}

pub fn what_if_json(w: &pb::WhatIfResponse) -> serde_json::Value {
    json!({ "lost": w.lost, "at_risk": w.at_risk })
}

pub fn what_if_text(nodes: &[String], w: &pb::WhatIfResponse) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "if {} died now:\nlost ({}): {}\nbelow their factor ({}): {}",
        nodes.join(", "),
        w.lost.len(),
        list(&w.lost),
        w.at_risk.len(),
        list(&w.at_risk)
    )
}

/// A zone's name, as the tracker takes it: 1 to 64 bytes.
pub fn parse_zone(s: &str) -> Result<String, String> {
    let max = p2p_core::limits::ZONE_MAX_BYTES;
    if s.is_empty() || s.len() > max {
        return Err(format!("a zone is 1 to {max} bytes"));
    }
    Ok(s.to_string())
}

/// A size in bytes: a number, optionally with a unit: K, M, G, T (or KiB,
/// MiB...) are powers of 1024, KB, MB... powers of 1000, B is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (for example 500MiB, 2G, 1TB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (B, K, M, G, T, KiB..., KB...)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn status_text(s: &pb::StatusResponse) -> String {
    let alive = s.nodes.iter().filter(|n| n.alive).count();
    let mut out = format!(
        "{} ({} alive), {}, {}, {} under-replicated, {} with no live copy\n",
        plural(s.nodes.len() as u64, "node", "nodes"),
        alive,
        plural(s.files, "file", "files"),
        plural(s.chunks, "chunk", "chunks"),
        s.under_replicated,
        s.lost
    );
    out += &format!(
        "repair: {} queued, {} in flight, {} pending\n",
        plural(s.repair_queue, "chunk", "chunks"),
        plural(s.repairs_in_flight, "copy", "copies"),
        plural(s.deletes_pending, "deletion", "deletions")
    );
    if !s.trackers.is_empty() {
        let members: Vec<String> = s
            .trackers
            .iter()
            .map(|t| format!("{} {} (log {})", t.addr, t.role, t.applied))
            .collect();
        out += &format!("trackers: {}\n", members.join(", "));
    }
    for f in &s.at_risk {
        out += &format!("file {}: {}\n", f.name, health(f));
    }
    let unlisted = s.at_risk_total.saturating_sub(s.at_risk.len() as u64);
    if unlisted > 0 {
        out += &format!(
            "and {unlisted} more {} at risk ({} in all; --at-risk N lists more)\n",
            if unlisted == 1 { "file" } else { "files" },
            s.at_risk_total
        );
    }
    for w in &s.warnings {
        out += &format!("warning: {w}\n");
    }
    out += &format!(
        "{:<18} {:<22} {:<8} {:>8}  {:<16} {:<20} {}\n",
        "NODE", "ADDR", "STATE", "CHUNKS", "ZONE", "USED/CAPACITY", "LAST SEEN"
    );
    for n in &s.nodes {
        let state = match (n.alive, n.leaving) {
            (_, true) => "leaving",
            (true, false) => "alive",
            (false, false) => "dead",
        };
        let space = match &n.space {
            Some(s) => format!("{}/{}", human_bytes(s.used), human_bytes(s.capacity)),
            None => "-".to_string(),
        };
        out += &format!(
            "{:<18} {:<22} {:<8} {:>8}  {:<16} {:<20} {} ms ago\n",
            n.id, n.addr, state, n.chunks, n.zone, space, n.last_seen_ms_ago
        );
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A status lists what the tracker sent, says how many more are at risk,
    // and counts in words that agree with their numbers.
    #[test]
    fn status_text_says_how_many_more_files_are_at_risk() {
        let s = pb::StatusResponse {
            nodes: vec![pb::NodeStatus {
                id: "n1".into(),
                addr: "127.0.0.1:7001".into(),
                alive: true,
                chunks: 1,
                ..Default::default()
            }],
            files: 1,
            chunks: 1,
            under_replicated: 1,
            repairs_in_flight: 1,
            at_risk: vec![pb::FileInfo {
                name: "f".into(),
                replicas: 3,
                chunks: 1,
                under_replicated: 1,
                min_copies: 1,
                ..Default::default()
            }],
            at_risk_total: 3,
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(
            text.starts_with("1 node (1 alive), 1 file, 1 chunk, 1 under-replicated"),
            "{text}"
        );
        assert!(text.contains("0 chunks queued, 1 copy in flight, 0 deletions pending"));
        assert!(text.contains("file f: "), "{text}");
        assert!(
            text.contains("and 2 more files at risk (3 in all;"),
            "{text}"
        );
        let json = status_json(&s);
        assert_eq!(json["at_risk_total"], 3);
        assert_eq!(json["at_risk"].as_array().map(Vec::len), Some(1));
    }
}
