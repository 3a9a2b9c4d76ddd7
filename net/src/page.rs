//! The cluster page the tracker serves at `/` (with `--http`): nodes by
//! zone with their disks and liveness, files at risk, the repair queue over
//! time and recent events. One server-rendered page that refreshes itself:
//! no script, no build step, nothing fetched from elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write;

use p2p_core::tracker::{NodeSummary, Status, human_bytes};

use crate::tracker::Journal;

/// Seconds between the page's refreshes.
pub const REFRESH_S: u32 = 2;

/// Text made safe inside HTML (names come from users).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `n` and its noun, singular or plural.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How long ago, as a person says it.
fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        1_000..120_000 => format!("{} s ago", ms / 1000),
        120_000..7_200_000 => format!("{} min ago", ms / 60_000),
        _ => format!("{} h ago", ms / 3_600_000),
    }
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
.summary{opacity:.85;margin-top:2px}
main{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:18px;padding:18px 24px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px}
h2{font-size:16px;margin:0 0 10px}
h3{font-size:14px;margin:12px 0 6px;color:#49526a}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;font-variant-numeric:tabular-nums}
th{font-weight:600;color:#6b7489;font-size:13px}
#nodes td,#nodes th{white-space:nowrap}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;background:#2fa84f}
tr.dead .dot{background:#d83a3a} tr.leaving .dot{background:#e8a33d}
tr.dead td{color:#8a91a3}
.bar{display:inline-block;vertical-align:middle;width:120px;height:10px;background:#e9ecf1;border-radius:5px;overflow:hidden;margin-right:6px}
.bar div{height:100%;background:#3b74d8} .bar div.full{background:#d83a3a}
.warn{background:#fff4e0;border:1px solid #e8a33d;border-radius:8px;padding:8px 14px;margin:18px 24px 0}
.ok{color:#2fa84f} .bad{color:#d83a3a}
ol{list-style:none;padding:0;margin:0} li{padding:3px 0;border-bottom:1px solid #eef0f3}
time{color:#6b7489;display:inline-block;min-width:90px}
svg{width:100%;height:90px;background:#fafbfc;border:1px solid #eef0f3}
footer{padding:0 24px 18px;color:#6b7489;font-size:13px}
";

/// The page for `status` and `journal`, as of `now_ms` (the journal's
/// clock).
pub fn cluster_page(status: &Status, journal: &Journal, now_ms: u64) -> String {
    let s = status;
    let mut out = String::new();
    let alive = s.nodes.iter().filter(|n| n.alive).count();
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content={REFRESH_S}>\
         <meta name=viewport content='width=device-width'>\
         <title>p2p cluster</title><style>{STYLE}</style></head><body>\
         <header><h1>p2p cluster</h1><div class=summary>{} ({alive} alive) · {} · {} · \
         <span id=under>{} under-replicated</span> · <span id=lost>{} with no live copy</span></div></header>",
        plural(s.nodes.len() as u64, "node", "nodes"),
        plural(s.files, "file", "files"),
        plural(s.chunks, "chunk", "chunks"),
        s.under_replicated,
        s.lost
    );
    for w in &s.warnings {
        let _ = write!(out, "<div class=warn>⚠ {}</div>", esc(&w.to_string()));
    }
    out.push_str("<main><div>");
    nodes_by_zone(&mut out, &s.nodes);
    out.push_str("</div><div>");
    at_risk(&mut out, s);
    repair_queue(&mut out, s, journal);
    events(&mut out, journal, now_ms);
    let _ = write!(
        out,
        "</div></main><footer>Refreshes every {REFRESH_S} s · \
         <a href=/metrics>metrics</a> · <a href=/healthz>health</a></footer></body></html>"
    );
    out
}

fn nodes_by_zone(out: &mut String, nodes: &[NodeSummary]) {
    out.push_str("<section id=nodes><h2>Nodes by zone</h2>");
    let mut zones: BTreeMap<&str, Vec<&NodeSummary>> = BTreeMap::new();
    for n in nodes {
        // A node without a zone is a zone of its own, named by its id.
        let zone = if n.zone == n.id.as_str() {
            ""
        } else {
            n.zone.as_str()
        };
        zones.entry(zone).or_default().push(n);
    }
    if nodes.is_empty() {
        out.push_str("<p>No node has registered yet.</p>");
    }
    for (zone, members) in zones {
        let up = members.iter().filter(|n| n.alive).count();
        let title = if zone.is_empty() {
            "no zone (each node its own)".to_string()
        } else {
            format!("zone {}", esc(zone))
        };
        let _ = write!(
            out,
            "<h3 class=zone>{title} · {up}/{} alive</h3><table><tr><th></th><th>node</th>\
             <th>address</th><th>chunks</th><th>disk</th><th>last seen</th></tr>",
            members.len()
        );
        for n in members {
            let class = match (n.alive, n.leaving) {
                (_, true) => "leaving",
                (true, false) => "alive",
                (false, false) => "dead",
            };
            let disk = match n.space {
                Some(sp) => {
                    let pct = if sp.capacity_bytes == 0 {
                        100.0
                    } else {
                        (sp.used_bytes as f64 * 100.0 / sp.capacity_bytes as f64).min(100.0)
                    };
                    format!(
                        "<span class=bar><div class='{}' style='width:{pct:.0}%'></div></span>{} of {}",
                        if pct >= 90.0 { "full" } else { "" },
                        human_bytes(sp.used_bytes),
                        human_bytes(sp.capacity_bytes)
                    )
                }
                None => "not reported".to_string(),
            };
            let _ = write!(
                out,
                "<tr class='node {class}' title={class}><td><span class=dot></span></td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{disk}</td><td>{}</td></tr>",
                esc(n.id.as_str()),
                esc(&n.addr),
                n.chunks,
                ago(n.last_seen_ms_ago)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn at_risk(out: &mut String, s: &Status) {
    out.push_str("<section id=risk><h2>Files at risk</h2>");
    if s.at_risk.is_empty() {
        out.push_str("<p class=ok>None: every chunk of every file has all its copies.</p>");
    } else {
        out.push_str(
            "<table><tr><th>file</th><th>fewest copies</th><th>chunks short</th><th>lost</th></tr>",
        );
        for f in &s.at_risk {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class={}>{}/{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.name),
                if f.lost > 0 { "bad" } else { "" },
                f.min_copies,
                f.replicas,
                f.under_replicated,
                f.lost
            );
        }
        out.push_str("</table>");
        let more = s.at_risk_total.saturating_sub(s.at_risk.len() as u64);
        if more > 0 {
            let _ = write!(
                out,
                "<p>and {more} more {} ({} in all; <code>p2p status --at-risk N</code> lists more)</p>",
                if more == 1 { "file" } else { "files" },
                s.at_risk_total
            );
        }
    }
    out.push_str("</section>");
}

fn repair_queue(out: &mut String, s: &Status, journal: &Journal) {
    let _ = write!(
        out,
        "<section id=repair><h2>Repair queue</h2><p>{} queued, {} in flight, {} pending</p>",
        plural(s.repair_queue, "chunk", "chunks"),
        plural(s.repairs_in_flight, "copy", "copies"),
        plural(s.deletes_pending, "deletion", "deletions"),
    );
    let q = &journal.queue;
    match (q.front(), q.back()) {
        (Some(&(t0, _)), Some(&(t1, _))) if t1 > t0 => {
            let top = q.iter().map(|&(_, v)| v).max().unwrap_or(0).max(1);
            let points: Vec<String> = q
                .iter()
                .map(|&(t, v)| {
                    let x = (t - t0) as f64 * 600.0 / (t1 - t0) as f64;
                    let y = 85.0 - v as f64 * 75.0 / top as f64;
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                out,
                "<svg viewBox='0 0 600 90' preserveAspectRatio=none role=img \
                 aria-label='repair queue over the last {} s, at most {top}'>\
                 <polyline fill=none stroke='#3b74d8' stroke-width=2 points='{}'/></svg>\
                 <p>last {} s; highest {top}</p>",
                (t1 - t0) / 1000,
                points.join(" "),
                (t1 - t0) / 1000
            );
        }
        _ => out.push_str("<p>No samples yet.</p>"),
    }
    out.push_str("</section>");
}

fn events(out: &mut String, journal: &Journal, now_ms: u64) {
    out.push_str("<section id=events><h2>Recent events</h2>");
    if journal.events.is_empty() {
        out.push_str("<p>Nothing yet.</p>");
    } else {
        out.push_str("<ol>");
        for (at, what) in journal.events.iter().rev() {
            let _ = write!(
                out,
                "<li><time>{}</time>{}</li>",
                ago(now_ms.saturating_sub(*at)),
                esc(what)
            );
        }
        out.push_str("</ol>");
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::NodeId;
    use p2p_core::tracker::Space;

    #[test]
    fn names_are_escaped_and_nodes_grouped_by_zone() {
        let node = |id: &str, zone: &str, alive: bool| NodeSummary {
            id: NodeId::new(id).unwrap(),
            addr: format!("{id}:1"),
            alive,
            leaving: false,
            chunks: 3,
            last_seen_ms_ago: 1500,
            zone: zone.into(),
            space: Some(Space {
                used_bytes: 95,
                capacity_bytes: 100,
            }),
        };
        let status = Status {
            nodes: vec![node("n1", "<a>", true), node("n2", "n2", false)],
            files: 1,
            chunks: 3,
            under_replicated: 0,
            lost: 0,
            repair_queue: 0,
            repairs_in_flight: 0,
            deletes_pending: 0,
            at_risk: vec![],
            at_risk_total: 0,
            warnings: vec![],
        };
        let mut journal = Journal::default();
        journal
            .events
            .push_back((1000, "node n2 declared dead".into()));
        journal.queue.extend([(0, 0), (2000, 5), (4000, 0)]);
        let html = cluster_page(&status, &journal, 3000);
        assert!(
            html.contains("2 nodes (1 alive) · 1 file · 3 chunks"),
            "{html}"
        );
        assert!(html.contains("zone &lt;a&gt;"), "{html}");
        assert!(!html.contains("<a>"));
        assert!(html.contains("no zone (each node its own)"));
        assert!(html.contains("class='node dead'"));
        assert!(html.contains("class='full' style='width:95%'"));
        assert!(html.contains("2 s ago</time>node n2 declared dead"));
        assert!(html.contains("<polyline"));

        // Only the files at risk the tracker listed, and how many more.
        let risky = p2p_core::tracker::FileSummary {
            name: "f".into(),
            size_bytes: 10,
            replicas: 3,
            chunks: 1,
            hash: p2p_core::ManifestHash([0; 32]),
            under_replicated: 1,
            min_copies: 2,
            lost: 0,
        };
        let capped = Status {
            at_risk: vec![risky],
            at_risk_total: 2,
            ..status
        };
        let html = cluster_page(&capped, &journal, 3000);
        assert!(html.contains("and 1 more file (2 in all"), "{html}");
    }
}
