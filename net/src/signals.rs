//! What a tracker's refusals tell a caller, in gRPC metadata: where the
//! group's leader is, that the same call may pass if made again soon, and
//! that a node has left for good. Servers set them, clients and the
//! transport read them; nothing here knows the services.

use tonic::Status;

/// The metadata key of a redirect: the leader's address.
pub const LEADER_KEY: &str = "p2p-leader";
/// The metadata key of a refusal that may succeed if asked again soon (a
/// tracker waiting for its nodes to report after it started).
pub const RETRY_KEY: &str = "p2p-retry";

/// `s`, asking to be asked again soon.
pub(crate) fn retry_soon_status(mut s: Status) -> Status {
    s.metadata_mut()
        .insert(RETRY_KEY, tonic::metadata::MetadataValue::from_static("1"));
    s
}

/// Whether `s` asks to be asked again soon.
pub fn retry_soon(s: &Status) -> bool {
    s.metadata().get(RETRY_KEY).is_some()
}

/// The answer of a tracker that does not lead its group.
pub fn redirect(leader: Option<&str>) -> Status {
    let mut s = Status::unavailable(match leader {
        Some(l) => format!("this tracker does not lead its group; the leader is {l}"),
        None => "this tracker does not lead its group, and no leader is known yet".to_string(),
    });
    // Empty when no leader is known: still a redirect, to no one yet.
    if let Ok(v) = leader.unwrap_or("").parse() {
        s.metadata_mut().insert(LEADER_KEY, v);
    }
    s
}

/// The leader a redirect names: `Some(None)` for a redirect that knows no
/// leader yet, `None` if `s` is not a redirect.
pub fn redirected_to(s: &Status) -> Option<Option<String>> {
    let v = s.metadata().get(LEADER_KEY)?;
    let v = v.to_str().ok()?;
    Some((!v.is_empty()).then(|| v.to_string()))
}

/// Metadata key on a tracker's refusal of a node that left the network
/// (and did not ask to join again): the node stops rather than retry.
pub const DEPARTED_KEY: &str = "p2p-departed";

/// `s`, saying the node it refuses left the network.
pub(crate) fn departed_status(mut s: Status) -> Status {
    s.metadata_mut().insert(
        DEPARTED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// Whether `s` refuses a node because it left the network.
pub fn departed(s: &Status) -> bool {
    s.metadata().contains_key(DEPARTED_KEY)
}
