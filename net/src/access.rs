//! Who may call: the check every call gets on a TLS server (the caller
//! presented a certificate of the cluster, not revoked), and whether its
//! role may make the call it made. Plaintext servers (loopback, tests, the
//! simulator) take every call.

use std::sync::Arc;

use p2p_core::enroll::{Call, Caller, authorize};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

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
