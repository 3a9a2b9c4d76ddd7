//! The trackers' side of enrollment, and the check every other call gets
//! on a TLS server: the caller must present a certificate of the cluster.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use p2p_core::NodeId;
use p2p_core::enroll::{Call, Caller, Role, Token, authorize};
use p2p_core::limits::{ADDR_MAX_BYTES, PEM_MAX_BYTES, TOKEN_LEN_MAX_BYTES};
use p2p_proto as pb;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::meta::MetaStore;
use crate::tls::Ca;
use crate::tracker::TrackerService;

/// `Enrollment`, served by a tracker that has the cluster's CA.
pub struct EnrollmentService<M: MetaStore> {
    tracker: TrackerService<M>,
    ca: Arc<Ca>,
}

impl<M: MetaStore> EnrollmentService<M> {
    pub fn new(tracker: TrackerService<M>, ca: Arc<Ca>) -> Self {
        Self { tracker, ca }
    }

    pub fn into_server(self) -> pb::enrollment_server::EnrollmentServer<Self> {
        pb::enrollment_server::EnrollmentServer::new(self)
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tonic::async_trait]
impl<M: MetaStore> pb::enrollment_server::Enrollment for EnrollmentService<M> {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollReply>, Status> {
        let r = req.into_inner();
        if r.token.len() > TOKEN_LEN_MAX_BYTES
            || r.csr_pem.len() > PEM_MAX_BYTES
            || r.addr.len() > ADDR_MAX_BYTES
        {
            return Err(Status::invalid_argument("enrollment request too large"));
        }
        let now = now_unix_s();
        let token = Token::verify(&r.token, self.ca.token_key(), now)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let (id, addrs) = match token.role {
            Role::Node => {
                let id = NodeId::new(r.node_id.clone())
                    .map_err(|e| Status::invalid_argument(format!("node id: {e}")))?;
                if r.addr.is_empty() {
                    return Err(Status::invalid_argument(
                        "a node enrolls with the address it serves at",
                    ));
                }
                (id.to_string(), vec![r.addr.clone()])
            }
            // A person is named by the token's nonce: unique, and what
            // revoking them names.
            Role::Client | Role::Admin => (hex::encode(token.nonce), Vec::new()),
            Role::Tracker => return Err(Status::permission_denied("trackers do not enroll")),
        };
        // The request is checked before the token is spent: a bad request
        // does not burn it.
        let cert_pem = self
            .ca
            .issue(&r.csr_pem, token.role, &id, &addrs)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.tracker.spend_token(&token, now).await?;
        tracing::info!(role = %token.role, id = %id, "enrolled");
        Ok(Response::new(pb::EnrollReply {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        }))
    }
}

/// On a TLS server, refuse a call that came without a certificate of the
/// cluster (rustls has checked any certificate presented against the CA),
/// and note who the caller is ([`Caller`], in the request's extensions)
/// for [`allow`]. Plaintext servers (loopback, tests, the simulator) take
/// every call.
#[allow(clippy::result_large_err)]
pub fn authenticated(mut req: Request<()>) -> Result<Request<()>, Status> {
    let tls = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .is_some();
    if !tls {
        return Ok(req);
    }
    let caller = match crate::tls::peer_identity(&req) {
        None => {
            return Err(Status::unauthenticated(
                "this cluster needs a certificate: enroll first (`p2p node --join TOKEN` or `p2p login TOKEN`)",
            ));
        }
        Some(Err(())) => {
            return Err(Status::unauthenticated(
                "the certificate names no role of this cluster",
            ));
        }
        Some(Ok((role, id))) => Caller { role, id },
    };
    req.extensions_mut().insert(caller);
    Ok(req)
}

/// [`authenticated`], for the members' own service: trackers only.
#[allow(clippy::result_large_err)]
pub fn trackers_only(req: Request<()>) -> Result<Request<()>, Status> {
    let req = authenticated(req)?;
    allow(&caller(&req), Call::Group)?;
    Ok(req)
}

/// The identities whose certificates the cluster revoked (`p2p revoke`):
/// read by the trackers from their data directory, learnt by nodes on
/// heartbeat replies. Clones share the set.
#[derive(Clone, Default, Debug)]
pub struct Revoked(Arc<std::sync::RwLock<std::collections::BTreeSet<String>>>);

impl Revoked {
    pub fn contains(&self, id: &str) -> bool {
        self.0.read().expect("revoked lock").contains(id)
    }

    /// Replace the set (at most [`p2p_core::limits::REVOKED_MAX`] kept).
    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        let set = ids
            .into_iter()
            .filter(|i| !i.is_empty())
            .take(p2p_core::limits::REVOKED_MAX)
            .collect();
        *self.0.write().expect("revoked lock") = set;
    }

    /// Add one identity (up to [`p2p_core::limits::REVOKED_MAX`]).
    pub fn insert(&self, id: &str) {
        let mut set = self.0.write().expect("revoked lock");
        if set.len() < p2p_core::limits::REVOKED_MAX {
            set.insert(id.to_string());
        }
    }

    pub fn list(&self) -> Vec<String> {
        self.0
            .read()
            .expect("revoked lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// [`authenticated`] (or [`trackers_only`]), refusing revoked certificates.
#[allow(clippy::result_large_err)]
pub fn checking(
    revoked: Revoked,
    trackers: bool,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req| {
        let req = if trackers {
            trackers_only(req)?
        } else {
            authenticated(req)?
        };
        if let Some(c) = caller(&req)
            && revoked.contains(&c.id)
        {
            return Err(Status::permission_denied(format!(
                "the certificate of {} {} was revoked",
                c.role, c.id
            )));
        }
        Ok(req)
    }
}

/// Who made the call, as [`authenticated`] noted it (`None` without TLS).
pub fn caller<T>(req: &Request<T>) -> Option<Caller> {
    req.extensions().get::<Caller>().cloned()
}

/// Whether the caller may make `call` ([`authorize`]): `PERMISSION_DENIED`
/// with the reason if not.
#[allow(clippy::result_large_err)]
pub fn allow(caller: &Option<Caller>, call: Call<'_>) -> Result<(), Status> {
    authorize(caller.as_ref(), call).map_err(|e| Status::permission_denied(e.to_string()))
}
