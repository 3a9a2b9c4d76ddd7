//! Enrollment tokens and roles: who may join the cluster, as what.
//!
//! A token is printed by `p2p token` on the tracker's host and handed to
//! whoever joins. It says which role the joiner gets, until when the token
//! works, where the trackers are and which certificate authority they
//! answer with (its pin: the first 16 bytes of the BLAKE3 hash of the CA
//! certificate, so the joiner trusts nothing a man in the middle could
//! present), and a nonce that makes it usable once. It is authenticated
//! with a keyed BLAKE3 MAC under a key only the trackers hold.
//!
//! Text form, fields separated by dots (the tracker list last, since
//! addresses contain dots):
//! `p2p1.<role>.<expires, unix s>.<nonce hex>.<pin hex>.<mac hex>.<trackers>`.
//!
//! Sans-IO: the key, the time and the randomness are the caller's.

use std::fmt;

use crate::limits::TOKEN_LEN_MAX_BYTES;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A storage node: registers and heartbeats as the node id in its
    /// certificate, and moves chunks between nodes.
    Node,
    /// A person or program that puts, gets, lists and removes files.
    Client,
    /// A client that may also make a node leave.
    Admin,
    /// A member of the tracker group.
    Tracker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Tracker => "tracker",
        }
    }

    pub fn from_name(s: &str) -> Option<Role> {
        [Role::Node, Role::Client, Role::Admin, Role::Tracker]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an enrollment token ({0})")]
    Malformed(&'static str),
    #[error("the enrollment token was not issued by this cluster (or was altered)")]
    BadMac,
    #[error("the enrollment token expired {ago_s} s ago; ask for a new one (`p2p token`)")]
    Expired { ago_s: u64 },
    #[error("the enrollment token was used already; ask for a new one (`p2p token`)")]
    Used,
}

/// A CA certificate's pin: the first 16 bytes of the BLAKE3 hash of its
/// DER encoding.
pub fn pin_of(ca_der: &[u8]) -> [u8; 16] {
    let h = blake3::hash(ca_der);
    let mut pin = [0u8; 16];
    pin.copy_from_slice(&h.as_bytes()[..16]);
    pin
}

/// An enrollment token's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub role: Role,
    /// Until when it works (unix seconds).
    pub expires_unix_s: u64,
    /// Makes it usable once: the trackers remember the nonces used.
    pub nonce: [u8; 16],
    /// The pin of the CA the trackers answer with ([`pin_of`]).
    pub pin: [u8; 16],
    /// The trackers' addresses, comma-separated.
    pub trackers: String,
}

const PREFIX: &str = "p2p1";

fn hex16(s: &str) -> Result<[u8; 16], TokenError> {
    if s.len() != 32 {
        return Err(TokenError::Malformed("a field has the wrong length"));
    }
    // Lowercase only: one text per token.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(TokenError::Malformed("a field is not lowercase hex"));
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).map_err(|_| TokenError::Malformed("a field is not hex"))?;
    Ok(out)
}

impl Token {
    /// The fields before the MAC, joined by `sep`.
    fn head(&self, sep: char) -> String {
        format!(
            "{PREFIX}{sep}{}{sep}{}{sep}{}{sep}{}",
            self.role,
            self.expires_unix_s,
            hex::encode(self.nonce),
            hex::encode(self.pin),
        )
    }

    fn mac(&self, key: &[u8; 32]) -> [u8; 16] {
        // The MAC covers every field.
        let signed = format!("{}|{}", self.head('|'), self.trackers);
        let h = blake3::keyed_hash(key, signed.as_bytes());
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&h.as_bytes()[..16]);
        mac
    }

    /// The token's text, authenticated with `key`.
    pub fn sign(&self, key: &[u8; 32]) -> String {
        format!(
            "{}.{}.{}",
            self.head('.'),
            hex::encode(self.mac(key)),
            self.trackers
        )
    }

    /// Read a token's fields without checking its MAC: what a joiner needs
    /// (where the trackers are and which CA to expect). Bounded: at most
    /// [`TOKEN_LEN_MAX_BYTES`].
    pub fn parse(text: &str) -> Result<(Token, [u8; 16]), TokenError> {
        let text = text.trim();
        if text.len() > TOKEN_LEN_MAX_BYTES {
            return Err(TokenError::Malformed("too long"));
        }
        let parts: Vec<&str> = text.splitn(7, '.').collect();
        let [prefix, role, expires, nonce, pin, mac, trackers] = parts.as_slice() else {
            return Err(TokenError::Malformed("too few fields"));
        };
        if *prefix != PREFIX {
            return Err(TokenError::Malformed("unknown version"));
        }
        let role = Role::from_name(role).ok_or(TokenError::Malformed("unknown role"))?;
        if role == Role::Tracker {
            return Err(TokenError::Malformed("trackers do not enroll"));
        }
        let expires_unix_s = expires
            .parse()
            .map_err(|_| TokenError::Malformed("bad expiry"))?;
        if trackers.is_empty() {
            return Err(TokenError::Malformed("no tracker address"));
        }
        let token = Token {
            role,
            expires_unix_s,
            nonce: hex16(nonce)?,
            pin: hex16(pin)?,
            trackers: trackers.to_string(),
        };
        Ok((token, hex16(mac)?))
    }

    /// Check a token presented to a tracker: issued under `key`, not
    /// expired at `now_unix_s`. (Whether it was used is the tracker's
    /// record: [`crate::tracker::Tracker::use_token`].)
    pub fn verify(text: &str, key: &[u8; 32], now_unix_s: u64) -> Result<Token, TokenError> {
        let (token, mac) = Token::parse(text)?;
        // Constant time: the comparison does not tell how much matched.
        let want = token.mac(key);
        if want
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(TokenError::BadMac);
        }
        if now_unix_s >= token.expires_unix_s {
            return Err(TokenError::Expired {
                ago_s: now_unix_s - token.expires_unix_s,
            });
        }
        Ok(token)
    }
}

/// Who calls: the role and identity their certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// A node's id, a tracker's address, a person's name.
    pub id: String,
}

/// A call to authorize. Node calls name the node they speak for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call<'a> {
    /// Register, report, heartbeat, begin or finish a leave: as node `node`.
    AsNode { node: &'a str },
    /// Allocate, commit, locate, list, remove: a person's file operations.
    Files,
    /// Cluster status.
    Status,
    /// Store a chunk on a node (a put, or another node's repair or
    /// hand-off).
    PutChunk,
    /// Read a chunk from a node (a get, or another node's repair).
    GetChunk,
    /// Make a node leave (`p2p leave --node`).
    Leave,
    /// Is the node there.
    Ping,
    /// Between members of the tracker group.
    Group,
    /// Revoke a certificate (`p2p revoke`).
    Revoke,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("a {role} certificate may not {what}")]
    Role { role: Role, what: &'static str },
    #[error("node {caller} may not speak for node {claimed}")]
    OtherNode { caller: String, claimed: String },
}

impl Call<'_> {
    fn what(&self) -> &'static str {
        match self {
            Call::AsNode { .. } => "act as a node",
            Call::Files => "put, get, list or remove files",
            Call::Status => "read the cluster's status",
            Call::PutChunk => "store chunks",
            Call::GetChunk => "read chunks",
            Call::Leave => "make a node leave (an admin certificate may)",
            Call::Ping => "ping",
            Call::Group => "take part in the tracker group",
            Call::Revoke => "revoke certificates (an admin certificate may)",
        }
    }
}

/// Whether `caller` may make `call`. `None`: no TLS (a plaintext cluster
/// on loopback, the simulator), where every call is allowed.
///
/// - a node acts only as the node its certificate names, and moves chunks;
/// - a client puts, gets, lists, removes and reads status;
/// - an admin may also make a node leave and revoke certificates;
/// - trackers talk to each other and pass revocations on to their leader.
pub fn authorize(caller: Option<&Caller>, call: Call<'_>) -> Result<(), Denied> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let allowed = match (caller.role, call) {
        (Role::Node, Call::AsNode { node }) => {
            if node != caller.id {
                return Err(Denied::OtherNode {
                    caller: caller.id.clone(),
                    claimed: node.to_string(),
                });
            }
            true
        }
        (Role::Node, Call::PutChunk | Call::GetChunk | Call::Ping) => true,
        (Role::Client | Role::Admin, Call::Files | Call::Status)
        | (Role::Client | Role::Admin, Call::PutChunk | Call::GetChunk | Call::Ping) => true,
        (Role::Admin, Call::Leave | Call::Revoke) => true,
        // A tracker passes on what `p2p revoke` wrote on its host.
        (Role::Tracker, Call::Group | Call::Ping | Call::Revoke) => true,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied::Role {
            role: caller.role,
            what: call.what(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> Token {
        Token {
            role: Role::Node,
            expires_unix_s: 1_700_003_600,
            nonce: [7; 16],
            pin: pin_of(b"a CA certificate"),
            trackers: "10.0.0.1:50051,10.0.0.2:50051".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let key = [9u8; 32];
        let text = token().sign(&key);
        assert!(text.starts_with("p2p1.node.1700003600."), "{text}");
        assert!(text.ends_with(".10.0.0.1:50051,10.0.0.2:50051"), "{text}");
        assert_eq!(Token::verify(&text, &key, 1_700_000_000), Ok(token()));
    }

    #[test]
    fn a_token_is_refused_when_expired_altered_or_under_another_key() {
        let key = [9u8; 32];
        let text = token().sign(&key);
        assert_eq!(
            Token::verify(&text, &key, 1_700_003_601),
            Err(TokenError::Expired { ago_s: 1 })
        );
        assert_eq!(
            Token::verify(&text, &[8u8; 32], 1_700_000_000),
            Err(TokenError::BadMac)
        );
        let admin = text.replacen(".node.", ".admin.", 1);
        assert_eq!(
            Token::verify(&admin, &key, 1_700_000_000),
            Err(TokenError::BadMac)
        );
        let elsewhere = text.replace("10.0.0.2", "10.6.6.6");
        assert_eq!(
            Token::verify(&elsewhere, &key, 1_700_000_000),
            Err(TokenError::BadMac)
        );
    }

    fn caller(role: Role, id: &str) -> Caller {
        Caller {
            role,
            id: id.into(),
        }
    }

    #[test]
    fn each_role_may_do_what_it_is_for_and_nothing_else() {
        let node = caller(Role::Node, "n1");
        let client = caller(Role::Client, "c");
        let admin = caller(Role::Admin, "a");
        let tracker = caller(Role::Tracker, "t:1");
        // Without TLS, everything.
        assert_eq!(authorize(None, Call::Leave), Ok(()));
        // A node speaks only for itself.
        assert_eq!(authorize(Some(&node), Call::AsNode { node: "n1" }), Ok(()));
        assert_eq!(
            authorize(Some(&node), Call::AsNode { node: "n2" }),
            Err(Denied::OtherNode {
                caller: "n1".into(),
                claimed: "n2".into()
            })
        );
        for c in [Call::PutChunk, Call::GetChunk, Call::Ping] {
            assert_eq!(authorize(Some(&node), c), Ok(()));
        }
        for c in [
            Call::Files,
            Call::Status,
            Call::Leave,
            Call::Group,
            Call::Revoke,
        ] {
            assert!(authorize(Some(&node), c).is_err(), "{c:?}");
        }
        // People do files; only an admin makes a node leave.
        for c in [Call::Files, Call::Status, Call::PutChunk, Call::GetChunk] {
            assert_eq!(authorize(Some(&client), c), Ok(()));
            assert_eq!(authorize(Some(&admin), c), Ok(()));
        }
        for c in [Call::Leave, Call::Revoke] {
            assert!(authorize(Some(&client), c).is_err(), "{c:?}");
            assert_eq!(authorize(Some(&admin), c), Ok(()));
        }
        for who in [&client, &admin] {
            assert!(authorize(Some(who), Call::AsNode { node: "n1" }).is_err());
            assert!(authorize(Some(who), Call::Group).is_err());
        }
        // Trackers only talk among themselves.
        assert_eq!(authorize(Some(&tracker), Call::Group), Ok(()));
        assert_eq!(authorize(Some(&tracker), Call::Revoke), Ok(()));
        for c in [Call::Files, Call::Leave, Call::AsNode { node: "t:1" }] {
            assert!(authorize(Some(&tracker), c).is_err(), "{c:?}");
        }
        let e = authorize(Some(&client), Call::Leave)
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin"), "{e}");
    }

    proptest! {
        // Any text: an error or a token, never a panic.
        #[test]
        fn any_text_parses_or_errs(s in ".{0,300}") {
            let _ = Token::verify(&s, &[1u8; 32], 0);
        }

        // A valid token with one character changed never verifies.
        #[test]
        fn one_changed_character_is_refused(i in 0usize..200, c in proptest::char::range('!', '~')) {
            let key = [3u8; 32];
            let text = token().sign(&key);
            let i = i % text.len();
            let mut changed: Vec<char> = text.chars().collect();
            prop_assume!(changed[i] != c);
            changed[i] = c;
            let changed: String = changed.into_iter().collect();
            prop_assert!(Token::verify(&changed, &key, 1_700_000_000).is_err());
        }
    }
}
