//! The trackers' side of enrollment: a token and a signing request in, a
//! certificate of the cluster out. Who may call what once enrolled is
//! [`crate::access`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use p2p_core::NodeId;
use p2p_core::enroll::{Role, Token};
use p2p_core::limits::{ADDR_MAX_BYTES, PEM_MAX_BYTES, TOKEN_LEN_MAX_BYTES};
use p2p_proto as pb;
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
