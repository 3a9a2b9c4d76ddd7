//! Mutual TLS: the cluster's certificate authority, certificates that carry
//! a role and an identity, enrollment, and the TLS settings of servers and
//! clients (rustls, through tonic).
//!
//! Layout on disk:
//! - a tracker's `<data>/tls/`: `ca.pem` and `ca-key.pem` (the CA, made by
//!   `p2p init`), `token-key` (the key enrollment tokens are authenticated
//!   with), and `trackers` (the addresses tokens name, written by the
//!   tracker when it starts). A tracker issues itself a server certificate
//!   for its address at every start; it is never written to disk.
//! - a node's `<data>/tls/` and a person's `$P2P_CONFIG`: `ca.pem`,
//!   `cert.pem`, `key.pem` ([`Credentials`]). The key is made where it is
//!   used and never leaves it: enrollment sends a certificate signing
//!   request.
//!
//! A certificate names its holder's role and identity in a URI subject
//! alternative name, `p2p://<role>/<id>` (a node's id, a tracker's address,
//! a person's chosen name), and the addresses it serves at as IP or DNS
//! names, which is what clients check when they connect.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_core::enroll::{Role, Token, pin_of};
use p2p_core::limits::PEM_MAX_BYTES;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::transport::host_of;

/// Why TLS material could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("{0} already exists: this cluster has a CA (delete it to start over)")]
    Exists(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Cert(e.to_string())
}

/// Read a small file (PEM, keys): bounded, so a huge file is an error.
fn read_small(path: &Path) -> Result<String, TlsError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.len() > PEM_MAX_BYTES as u64 {
        return Err(TlsError::Bad {
            path: path.to_path_buf(),
            msg: format!("larger than {PEM_MAX_BYTES} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Write `text` to `path` durably, readable by its owner only when
/// `secret`.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The DER of the first certificate in `pem`.
fn first_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(cert_err)?
        .to_vec())
}

/// The URI naming a role and an identity in a certificate.
fn identity_uri(role: Role, id: &str) -> String {
    format!("p2p://{role}/{id}")
}

/// The role and identity a certificate (DER) names, if it names one.
pub fn identity_of(der: &[u8]) -> Option<(Role, String)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => {
            let rest = u.strip_prefix("p2p://")?;
            let (role, id) = rest.split_once('/')?;
            Some((Role::from_name(role)?, id.to_string()))
        }
        _ => None,
    })
}

fn san_of(addr: &str) -> Result<SanType, TlsError> {
    let host = host_of(addr);
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(cert_err)?),
    })
}

/// How long the certificates the CA issues are valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn validity(params: &mut CertificateParams, for_how_long: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + for_how_long;
}

/// The cluster's certificate authority, as a tracker holds it.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    token_key: [u8; 32],
    dir: PathBuf,
}

impl Ca {
    fn dir_of(data: &Path) -> PathBuf {
        data.join("tls")
    }

    /// Make the CA under `<data>/tls/` (`p2p init`); refused if one exists.
    pub fn init(data: &Path) -> Result<Ca, TlsError> {
        let dir = Self::dir_of(data);
        let key_path = dir.join("ca-key.pem");
        if key_path.exists() {
            return Err(TlsError::Exists(key_path));
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "p2p cluster CA");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let mut token_key = [0u8; 32];
        rand::fill(&mut token_key);
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&dir.join("token-key"), &hex::encode(token_key), true)?;
        write_file(&dir.join("ca.pem"), &cert.pem(), false)?;
        Self::load(data)?.ok_or_else(|| TlsError::Bad {
            path: key_path,
            msg: "written but not readable".into(),
        })
    }

    /// Whether `p2p init` made a CA under `<data>/tls/` (without reading it).
    pub fn exists(data: &Path) -> bool {
        Self::dir_of(data).join("ca-key.pem").exists()
    }

    /// The CA under `<data>/tls/`, if `p2p init` made one there.
    pub fn load(data: &Path) -> Result<Option<Ca>, TlsError> {
        let dir = Self::dir_of(data);
        if !Self::exists(data) {
            return Ok(None);
        }
        let key_path = dir.join("ca-key.pem");
        let key = KeyPair::from_pem(&read_small(&key_path)?).map_err(|e| TlsError::Bad {
            path: key_path.clone(),
            msg: e.to_string(),
        })?;
        let cert_path = dir.join("ca.pem");
        let cert_pem = read_small(&cert_path)?;
        let cert_der = first_der(&cert_pem)?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.clone().into(), key).map_err(|e| TlsError::Bad {
                path: cert_path.clone(),
                msg: e.to_string(),
            })?;
        let key_file = dir.join("token-key");
        let token_key = hex::decode(read_small(&key_file)?.trim())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| TlsError::Bad {
                path: key_file.clone(),
                msg: "not 32 bytes of hex".into(),
            })?;
        Ok(Some(Ca {
            cert_pem,
            cert_der,
            issuer,
            token_key,
            dir,
        }))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// What tokens carry so joiners can check they talk to this cluster.
    pub fn pin(&self) -> [u8; 16] {
        pin_of(&self.cert_der)
    }

    pub fn token_key(&self) -> &[u8; 32] {
        &self.token_key
    }

    /// Where tokens tell joiners to go: what the tracker noted when it
    /// started (`<data>/tls/trackers`).
    pub fn trackers(&self) -> Option<String> {
        noted_trackers(&self.dir)
    }

    /// Note where this cluster's trackers are, for `p2p token`.
    pub fn set_trackers(&self, list: &str) -> Result<(), TlsError> {
        note_trackers(&self.dir, list)
    }

    /// A new enrollment token for `role`, valid for `ttl` from `now_unix_s`.
    pub fn token(&self, role: Role, ttl: Duration, now_unix_s: u64, trackers: &str) -> String {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        Token {
            role,
            expires_unix_s: now_unix_s + ttl.as_secs(),
            nonce,
            pin: self.pin(),
            trackers: trackers.to_string(),
        }
        .sign(&self.token_key)
    }

    fn params(role: Role, id: &str, addrs: &[String]) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{role} {id}"));
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(
            identity_uri(role, id).try_into().map_err(cert_err)?,
        )];
        for a in addrs {
            sans.push(san_of(a)?);
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, CERT_VALIDITY);
        Ok(params)
    }

    /// Sign the key of certificate signing request `csr_pem` for `role` and
    /// `id`, serving at `addrs`. Only the request's public key is used:
    /// what the certificate says is decided here.
    pub fn issue(
        &self,
        csr_pem: &str,
        role: Role,
        id: &str,
        addrs: &[String],
    ) -> Result<String, TlsError> {
        if csr_pem.len() > PEM_MAX_BYTES {
            return Err(TlsError::Cert(
                "certificate signing request too large".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_err)?;
        let cert = Self::params(role, id, addrs)?
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(cert_err)?;
        Ok(cert.pem())
    }

    /// Credentials for this tracker itself, for its addresses: made fresh
    /// at every start.
    pub fn tracker_credentials(&self, addrs: &[String]) -> Result<Credentials, TlsError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let id = addrs.first().map(String::as_str).unwrap_or("tracker");
        let cert = Self::params(Role::Tracker, id, addrs)?
            .signed_by(&key, &self.issuer)
            .map_err(cert_err)?;
        Ok(Credentials {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The tracker addresses noted in `dir` (a tracker's `tls/` when it
/// starts; a node's `tls/` or a person's config at enrollment), if any.
pub fn noted_trackers(dir: &Path) -> Option<String> {
    read_small(&dir.join("trackers"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Note the tracker addresses `list` in `dir`.
pub fn note_trackers(dir: &Path, list: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_file(&dir.join("trackers"), list, false)
}

/// A key pair and the signing request that carries its public key, made
/// where the key stays.
pub fn new_key_and_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(cert_err)?
        .pem()
        .map_err(cert_err)?;
    Ok((key.serialize_pem(), csr))
}

/// A holder's TLS material: the CA it trusts, its certificate and its key.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// The credentials in `dir` (`ca.pem`, `cert.pem`, `key.pem`), if it
    /// has them.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, TlsError> {
        if !dir.join("cert.pem").exists() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            ca_pem: read_small(&dir.join("ca.pem"))?,
            cert_pem: read_small(&dir.join("cert.pem"))?,
            key_pem: read_small(&dir.join("key.pem"))?,
        }))
    }

    /// Keep them in `dir` (the key readable by its owner only).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_file(&dir.join("key.pem"), &self.key_pem, true)?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, false)?;
        write_file(&dir.join("cert.pem"), &self.cert_pem, false)
    }

    /// The role and identity the certificate names.
    pub fn identity(&self) -> Option<(Role, String)> {
        identity_of(&first_der(&self.cert_pem).ok()?)
    }

    /// A server's settings: present this certificate (with the CA's, so
    /// a joiner can check the pin), and ask clients for theirs, checked
    /// against the CA. A client without one may connect (to enroll); every
    /// other call refuses it.
    pub fn server(&self) -> ServerTlsConfig {
        install_provider();
        let chain = format!("{}\n{}", self.cert_pem.trim_end(), self.ca_pem);
        ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_secs(
                p2p_core::limits::TLS_HANDSHAKE_MAX_S,
            ))
    }

    /// A client's settings: trust only the cluster's CA, present this
    /// certificate.
    pub fn client(&self) -> ClientTlsConfig {
        install_provider();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

impl crate::transport::TcpDialer {
    /// Dial with mutual TLS: trust only the cluster's CA, present `creds`.
    pub fn with_tls(mut self, creds: &Credentials) -> Self {
        self.tls = Some(creds.client());
        self
    }
}

/// The process's TLS provider (tonic's servers and channels use it):
/// ring's, with AES-128-GCM preferred. It is as safe as AES-256 for this
/// use and about 15 % cheaper per byte, and every byte of every chunk
/// moves encrypted. The order a client offers decides (rustls servers
/// follow the client's preference).
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut p = default_provider();
    let first = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    p.cipher_suites
        .retain(|s| !first.iter().any(|f| f.suite() == s.suite()));
    p.cipher_suites.splice(0..0, first);
    p
}

/// Make [`provider`] the process's default, once (a later call, or one
/// after another default was installed, changes nothing).
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = provider().install_default();
    });
}

/// The certificates a request came with, if over TLS, as role and
/// identity: `None` without a certificate, `Some(Err)` with one that names
/// none.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<Result<(Role, String), ()>> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    Some(identity_of(leaf.as_ref()).ok_or(()))
}

pub use enroll_client::enroll;

mod enroll_client {
    //! The joiner's side of enrollment: it has no CA yet, only the token's
    //! pin, so it checks the tracker's certificate chain itself (the CA in
    //! the chain must have the pin, and the tracker's certificate must be
    //! signed by it for the address dialled), over a connection it makes
    //! with rustls directly.

    use std::sync::Arc;

    use hyper_util::rt::TokioIo;
    use p2p_core::enroll::pin_of;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

    use super::{Credentials, new_key_and_csr};
    use crate::transport::Timeouts;
    use crate::transport::{host_of, strip_scheme};
    use p2p_proto as pb;

    #[derive(Debug)]
    struct Pinned {
        pin: [u8; 16],
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let ca = intermediates
                .iter()
                .find(|c| pin_of(c.as_ref()) == self.pin)
                .ok_or_else(|| {
                    rustls::Error::General(
                        "the tracker's certificate authority is not the one the token names".into(),
                    )
                })?;
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone().into_owned())?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Enroll with `token` at one of its trackers: as node `node` serving
    /// at `addr` for a node token, as a person otherwise. Returns the
    /// credentials to keep (the key was made here).
    pub async fn enroll(
        token: &str,
        node: Option<(&str, &str)>,
        timeouts: &Timeouts,
    ) -> Result<Credentials, crate::ClientError> {
        let (parsed, _) = p2p_core::enroll::Token::parse(token)
            .map_err(|e| crate::ClientError::Enroll(e.to_string()))?;
        let (key_pem, csr_pem) =
            new_key_and_csr().map_err(|e| crate::ClientError::Enroll(e.to_string()))?;
        let provider = Arc::new(super::provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::ClientError::Enroll(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: parsed.pin,
                provider,
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let mut last = String::from("no tracker address in the token");
        // A tracker group may be electing its leader (the members answer
        // UNAVAILABLE meanwhile): go round the members for a while.
        let started = tokio::time::Instant::now();
        let patience = timeouts.request.min(std::time::Duration::from_secs(20));
        loop {
            for addr in crate::transport::tracker_members(&parsed.trackers) {
                let bare = strip_scheme(&addr).to_string();
                let host = host_of(&bare).to_string();
                let (config, bare2) = (config.clone(), bare.clone());
                let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                    let (config, bare, host) = (config.clone(), bare2.clone(), host.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(&bare).await?;
                        tcp.set_nodelay(true)?;
                        let name = ServerName::try_from(host)
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                });
                let channel = match crate::transport::endpoint(&bare, timeouts)?
                    .connect_with_connector(connector)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("tracker {bare}: {}", crate::error::source_chain(&e));
                        continue;
                    }
                };
                let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
                let req = pb::EnrollRequest {
                    token: token.trim().to_string(),
                    csr_pem: csr_pem.clone(),
                    node_id: node.map(|n| n.0.to_string()).unwrap_or_default(),
                    addr: node.map(|n| n.1.to_string()).unwrap_or_default(),
                };
                match client.enroll(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        return Ok(Credentials {
                            ca_pem: r.ca_pem,
                            cert_pem: r.cert_pem,
                            key_pem,
                        });
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        last = format!("tracker {bare}: {}", s.message());
                    }
                    Err(s) => return Err(crate::ClientError::Enroll(s.message().to_string())),
                }
            }
            if started.elapsed() >= patience {
                return Err(crate::ClientError::Enroll(last));
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
}
