//! The lag fault (see [`crate::plan::Action::Lag`]): a node's messages to
//! the trackers held back just after it stores a chunk, long enough that
//! its next heartbeat overtakes the held one, while that chunk rots and is
//! removed. A tracker that applied the held heartbeat would count a copy
//! the node no longer has (the checker's phantom copy) and repair around
//! nothing; random stalls make that ordering too rarely to rely on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use p2p_core::ChunkId;

use crate::store::MemStore;

/// How long the lag lasts: past the second the held heartbeat waits for an
/// answer (it is sent within an interval, 100 ms, of the start), so its
/// cancellation and its connection's close are held back as long as it
/// is (they arrive after it, as they would on a slow path, rather than with
/// it and cancelling it unread).
const HOLD_MS: u64 = 1_500;

/// When the new chunk rots, after the lag starts: once the heartbeat that
/// reports it added has been sent (one interval, 100 ms), well before the
/// timeout.
const ROT_AFTER_MS: u64 = 150;

/// The rot waits for another copy the tracker counts until then (a put's
/// copies are counted when it commits): later, a fresh heartbeat would not
/// report the removal before the held one arrives.
const ROT_BY_MS: u64 = 700;

enum Phase {
    /// Waiting for the node to store a chunk it did not hold.
    Armed { had: BTreeSet<ChunkId> },
    /// Since `since`, messages between the node and the trackers take
    /// `delay_ms` on the connection that was in use (`held`, found with
    /// the first message sent on it), and arrive at once on any other: the
    /// node's next connection overtakes the held one.
    Holding {
        since: u64,
        chunk: ChunkId,
        rotted: bool,
        held: Option<(SocketAddr, SocketAddr)>,
    },
}

struct Lag {
    node: String,
    delay_ms: u16,
    phase: Phase,
}

/// What a step of the lags did, for the trace and the coverage count.
pub struct Event {
    pub line: String,
    /// Counted when the lag starts.
    pub started: bool,
    /// Whether it is a fault (the lag starting, the rot), for the checks
    /// that hold only with no fault meanwhile.
    pub fault: bool,
}

/// What the lags see of the run.
pub struct Env<'a> {
    pub stores: &'a BTreeMap<String, MemStore>,
    /// Whether a node is up (a lag on a node down or gone is dropped).
    pub running: &'a dyn Fn(&str) -> bool,
    /// Whether rot of a node's copy of a chunk leaves an intact copy the
    /// tracker counts elsewhere (a lag's rot never takes the last copy).
    pub survivable: &'a dyn Fn(&str, &ChunkId) -> bool,
    /// Whether the fault window is open (no lag starts after it).
    pub open: bool,
    /// The global latency bound a link returns to.
    pub latency_ms: u16,
}

/// The lags armed or in force, and the links they took over.
pub struct Lags {
    lags: Vec<Lag>,
    trackers: Vec<String>,
    /// Node-to-tracker links a lag left with a latency of their own:
    /// turmoil then ignores the global bound on them, so it is set on them
    /// too (not on links a lag holds: their minimum is the lag's).
    own: BTreeSet<(String, String)>,
}

impl Lags {
    pub fn new(trackers: u8) -> Self {
        Self {
            lags: Vec::new(),
            trackers: (0..trackers).map(crate::trackers::host).collect(),
            own: BTreeSet::new(),
        }
    }

    /// Lag `node` (whose disk is `store`) once it next stores a chunk.
    pub fn arm(&mut self, node: String, delay_ms: u16, store: &MemStore) {
        let had = store.ids().into_iter().collect();
        self.lags.push(Lag {
            node,
            delay_ms,
            phase: Phase::Armed { had },
        });
    }

    /// The global latency bound changed to `max_ms`: links a lag took over
    /// follow it too.
    pub fn follow_latency(&self, sim: &turmoil::Sim<'_>, max_ms: u16) {
        for (a, b) in &self.own {
            sim.set_link_max_message_latency(
                a.as_str(),
                b.as_str(),
                Duration::from_millis(max_ms.into()),
            );
        }
    }

    /// Advance every lag to `now`.
    pub fn step(&mut self, sim: &turmoil::Sim<'_>, now: u64, env: &Env<'_>) -> Vec<Event> {
        let Env {
            stores,
            running,
            survivable,
            open,
            latency_ms,
        } = *env;
        let mut events = Vec::new();
        let trackers = &self.trackers;
        let own = &mut self.own;
        self.lags.retain_mut(|lag| {
            let Some(store) = stores.get(&lag.node) else {
                return false;
            };
            match &mut lag.phase {
                Phase::Armed { had } => {
                    if !running(&lag.node) || !open {
                        events.push(Event {
                            line: format!(
                                "lag {}: {} before it stored a chunk",
                                lag.node,
                                if open { "down" } else { "the fault window closed" }
                            ),
                            started: false,
                            fault: false,
                        });
                        return false;
                    }
                    let Some(chunk) = store
                        .ids()
                        .into_iter()
                        .find(|c| !had.contains(c) && store.holds_intact(c))
                    else {
                        return true;
                    };
                    for t in trackers {
                        // Its own until the lag is over: a lower global
                        // bound must not go below this minimum.
                        own.remove(&(lag.node.clone(), t.clone()));
                        sim.set_link_latency(
                            lag.node.as_str(),
                            t.as_str(),
                            Duration::from_millis(lag.delay_ms.into()),
                        );
                    }
                    events.push(Event {
                        line: format!(
                            "lag: {}'s messages to the trackers on the connection in use take {}ms for {HOLD_MS}ms (aimed: it just stored {})",
                            lag.node,
                            lag.delay_ms,
                            &chunk.to_hex()[..8]
                        ),
                        started: true,
                        fault: true,
                    });
                    lag.phase = Phase::Holding {
                        since: now,
                        chunk,
                        rotted: false,
                        held: None,
                    };
                    true
                }
                Phase::Holding {
                    since,
                    chunk,
                    rotted,
                    held,
                } => {
                    let node_ip = sim.lookup(lag.node.as_str());
                    let tracker_ips: Vec<IpAddr> =
                        trackers.iter().map(|t| sim.lookup(t.as_str())).collect();
                    hold_one_connection(sim, node_ip, &tracker_ips, held);
                    // Once the heartbeat reporting the copy is sent, as
                    // soon as another copy the tracker counts is intact.
                    if !*rotted && now >= *since + ROT_AFTER_MS {
                        let c = *chunk;
                        if !store.holds_intact(&c) {
                            *rotted = true;
                        } else if survivable(&lag.node, &c) {
                            *rotted = true;
                            store.rot(0, |x| *x == c);
                            events.push(Event {
                                line: format!(
                                    "rot {} on {} (aimed: its heartbeat reporting the copy added is held back)",
                                    &c.to_hex()[..8],
                                    lag.node
                                ),
                                started: false,
                                fault: true,
                            });
                        } else if now >= *since + ROT_BY_MS {
                            *rotted = true;
                            events.push(Event {
                                line: format!(
                                    "no rot of {} on {}: no other copy the tracker counts",
                                    &c.to_hex()[..8],
                                    lag.node
                                ),
                                started: false,
                                fault: false,
                            });
                        }
                    }
                    if now < *since + HOLD_MS {
                        return true;
                    }
                    for t in trackers {
                        sim.set_link_latency(lag.node.as_str(), t.as_str(), Duration::ZERO);
                        sim.set_link_max_message_latency(
                            lag.node.as_str(),
                            t.as_str(),
                            Duration::from_millis(latency_ms.into()),
                        );
                        own.insert((lag.node.clone(), t.clone()));
                    }
                    events.push(Event {
                        line: format!(
                            "lag over: {}'s messages to the trackers take up to {latency_ms}ms",
                            lag.node
                        ),
                        started: false,
                        fault: false,
                    });
                    false
                }
            }
        });
        events
    }
}

/// Deliver at once every message in flight between `node` and the
/// trackers except those of the `held` connection (the first one seen from
/// the node, if none is yet), which keep the lag's latency.
fn hold_one_connection(
    sim: &turmoil::Sim<'_>,
    node: IpAddr,
    trackers: &[IpAddr],
    held: &mut Option<(SocketAddr, SocketAddr)>,
) {
    sim.links(|links| {
        for link in links {
            let (a, b) = link.pair();
            let ours = (a == node && trackers.contains(&b)) || (b == node && trackers.contains(&a));
            if !ours {
                continue;
            }
            for sent in link {
                let (src, dst) = sent.pair();
                if held.is_none() && src.ip() == node {
                    *held = Some((src, dst));
                }
                let on_held =
                    held.is_some_and(|(s, d)| (src, dst) == (s, d) || (src, dst) == (d, s));
                if !on_held {
                    sent.deliver();
                }
            }
        }
    });
}
