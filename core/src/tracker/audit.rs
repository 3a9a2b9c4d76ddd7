//! A full recomputation of everything the tracker keeps incrementally, to
//! check the incremental upkeep against. Walks every chunk: for tests and
//! the simulator, never on a request path.

use std::collections::{BTreeMap, BTreeSet};

use super::index::{ChunkIx, FileIx, NodeIx};
use super::{Class, Tracker, class};

impl Tracker {
    /// Recompute holders, live counts, factors, the health sets, per-file
    /// counts and counters from scratch and compare them with what the
    /// tracker keeps. `Err` names the first difference.
    pub fn audit(&self) -> Result<(), String> {
        // Nodes: the id index and the table agree.
        for (id, &nx) in &self.node_ix {
            let n = self.nodes[nx as usize]
                .as_ref()
                .ok_or_else(|| format!("node {id} indexed at an empty slot {nx}"))?;
            if n.id != *id {
                return Err(format!("node slot {nx} holds {} not {id}", n.id));
            }
        }
        let registered = self.nodes.iter().flatten().count();
        if registered != self.node_ix.len() {
            return Err(format!(
                "{registered} node slots in use, {} indexed",
                self.node_ix.len()
            ));
        }

        // Who references what, from the files alone.
        let mut refs: BTreeMap<ChunkIx, BTreeMap<FileIx, u32>> = BTreeMap::new();
        for (name, &fx) in &self.by_name {
            let f = self.files[fx as usize]
                .as_ref()
                .ok_or_else(|| format!("file {name} indexed at an empty slot"))?;
            if f.name != *name {
                return Err(format!("file slot {fx} holds {} not {name}", f.name));
            }
            for &cx in &f.chunks {
                *refs.entry(cx).or_default().entry(fx).or_default() += 1;
            }
        }

        let mut under: Vec<BTreeSet<ChunkIx>> = vec![BTreeSet::new(); self.health.under.len()];
        let mut over = BTreeSet::new();
        let mut orphans = BTreeSet::new();
        let mut crowded = BTreeSet::new();
        let mut short: BTreeMap<FileIx, Vec<u32>> = BTreeMap::new();
        let mut held: BTreeMap<NodeIx, BTreeSet<ChunkIx>> = BTreeMap::new();
        let mut records = 0;
        for (cx, rec) in self.chunks.iter() {
            records += 1;
            if self.chunks.find(&rec.id) != Some(cx) {
                return Err(format!("chunk {} at {cx} is not found by id", rec.id));
            }
            for w in rec.holders.windows(2) {
                if self.node(w[0]).id >= self.node(w[1]).id {
                    return Err(format!("holders of {} out of order or repeated", rec.id));
                }
            }
            for &nx in &rec.holders {
                held.entry(nx).or_default().insert(cx);
            }
            let live = rec.holders.iter().filter(|&&nx| self.alive(nx)).count() as u8;
            if live != rec.live {
                return Err(format!(
                    "chunk {}: live {} kept, {live} counted",
                    rec.id, rec.live
                ));
            }
            let files: BTreeMap<FileIx, u32> = refs.remove(&cx).unwrap_or_default();
            let kept: BTreeMap<FileIx, u32> = self.files_of(cx).into_iter().collect();
            if kept != files {
                return Err(format!(
                    "chunk {}: files {kept:?} kept, {files:?} counted",
                    rec.id
                ));
            }
            let factor = files
                .keys()
                .map(|&fx| self.file(fx).replicas as u8)
                .max()
                .unwrap_or(0);
            if factor != rec.factor {
                return Err(format!(
                    "chunk {}: factor {} kept, {factor} counted",
                    rec.id, rec.factor
                ));
            }
            if factor == 0 && rec.holders.is_empty() {
                return Err(format!(
                    "chunk {}: nobody needs or holds it, yet it has a record",
                    rec.id
                ));
            }
            let kind = class(live, factor, !rec.holders.is_empty());
            if rec.orphan != (kind == Class::Orphan) {
                return Err(format!(
                    "chunk {}: orphan flag {} is wrong",
                    rec.id, rec.orphan
                ));
            }
            if factor > 0 && live > 1 && self.is_crowded(cx) {
                crowded.insert(cx);
            }
            match kind {
                Class::Under(k) => {
                    under[k as usize].insert(cx);
                }
                Class::Over => {
                    over.insert(cx);
                }
                Class::Orphan => {
                    orphans.insert(cx);
                }
                Class::Settled => {}
            }
            for (&fx, &n) in &files {
                let f = self.file(fx);
                let s = short
                    .entry(fx)
                    .or_insert_with(|| vec![0; f.replicas as usize]);
                if u32::from(live) < f.replicas {
                    s[live as usize] += n;
                }
            }
        }
        if let Some((cx, _)) = refs.into_iter().next() {
            return Err(format!(
                "a file references chunk index {cx}, which has no record"
            ));
        }
        if records != self.chunks.len() {
            return Err(format!("{records} records, {} indexed", self.chunks.len()));
        }
        for (k, set) in under.iter().enumerate() {
            let kept: BTreeSet<ChunkIx> = self.health.under[k].iter().collect();
            if kept != *set {
                return Err(format!("under[{k}]: {kept:?} kept, {set:?} counted"));
            }
        }
        let kept_orphans: BTreeSet<ChunkIx> = self.health.orphans.iter().collect();
        if kept_orphans != orphans {
            return Err(format!(
                "orphans: {kept_orphans:?} kept, {orphans:?} counted"
            ));
        }
        let kept_crowded: BTreeSet<ChunkIx> = self.health.crowded.iter().collect();
        if kept_crowded != crowded {
            return Err(format!(
                "crowded: {kept_crowded:?} kept, {crowded:?} counted"
            ));
        }
        let kept_over: BTreeSet<ChunkIx> = self.health.over.iter().collect();
        if kept_over != over {
            return Err(format!("over: {kept_over:?} kept, {over:?} counted"));
        }
        let mut at_risk = BTreeSet::new();
        for &fx in self.by_name.values() {
            let f = self.file(fx);
            let counted = short
                .remove(&fx)
                .unwrap_or_else(|| vec![0; f.replicas as usize]);
            if counted != f.short {
                return Err(format!(
                    "file {}: short {:?} kept, {counted:?} counted",
                    f.name, f.short
                ));
            }
            if counted.iter().any(|&c| c > 0) {
                at_risk.insert(fx);
            }
        }
        if at_risk != self.health.at_risk {
            return Err(format!(
                "at risk: {:?} kept, {at_risk:?} counted",
                self.health.at_risk
            ));
        }
        let referenced = self.chunks.iter().filter(|(_, r)| r.factor > 0).count() as u64;
        if referenced != self.health.referenced {
            return Err(format!(
                "referenced: {} kept, {referenced} counted",
                self.health.referenced
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let nx = i as NodeIx;
            let kept: BTreeSet<ChunkIx> = n.chunks.iter().collect();
            let counted = held.remove(&nx).unwrap_or_default();
            if kept != counted {
                return Err(format!(
                    "node {}: inventory differs from the holder lists",
                    n.id
                ));
            }
        }
        if !held.is_empty() {
            return Err(format!("holder lists name removed nodes {:?}", held.keys()));
        }
        Ok(())
    }
}
