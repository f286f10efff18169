//! Tokens and the credential table.
//!
//! A token is 256 random bits (`avbus_` and 64 hex digits). The bus stores only
//! `sha256:<salt>:<digest>`, the SHA-256 of a random 16-byte salt followed by the
//! token. A fast hash is enough here: with 256 bits of entropy there is no dictionary
//! to try, and the salt keeps equal tokens from having equal lines. Digests are
//! compared in constant time (`subtle`), and every entry is compared on every attempt,
//! so the answer's timing says nothing about which entry or which byte differed.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Grant;
use crate::config::{ClientRules, Config};
use crate::value::Value;

/// The prefix of every token, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "avbus_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Random bytes of salt in a stored hash.
const SALT_BYTES: usize = 16;

fn random(buf: &mut [u8]) {
    // No OS randomness at all is not something a token generator can paper over.
    if getrandom::fill(buf).is_err() {
        for b in buf.iter_mut() {
            *b = fastrand::u8(..);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A new random token.
pub fn new_token() -> String {
    let mut b = [0u8; TOKEN_BYTES];
    random(&mut b);
    format!("{TOKEN_PREFIX}{}", hex(&b))
}

fn digest(salt: &[u8], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// The line the bus stores for `token`: `sha256:<salt>:<digest>`, with a new salt.
pub fn hash_token(token: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    random(&mut salt);
    format!("sha256:{}:{}", hex(&salt), hex(&digest(&salt, token)))
}

/// The hex SHA-256 fingerprint of a DER certificate, as `cert_sha256` takes it.
pub fn fingerprint_hex(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Parses a SHA-256 fingerprint written as hex, with or without `:` between bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    unhex(&clean.to_ascii_lowercase())?.try_into().ok()
}

struct TokenEntry {
    salt: Vec<u8>,
    digest: [u8; 32],
    grant: Arc<Grant>,
}

/// Why the bus refused a client's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// No credentials, and anonymous clients are not allowed. Not a guess: it does
    /// not count towards the address's backoff.
    #[error("this bus requires credentials: hello.credentials = {{token: \"avbus_...\"}}")]
    Missing,
    /// A token that no entry has, or credentials of the wrong shape.
    #[error("unknown or wrong credentials")]
    Wrong,
}

/// The credential table from `[auth]`, compiled.
pub struct Authenticator {
    tokens: Vec<TokenEntry>,
    certs: Vec<([u8; 32], Arc<Grant>)>,
    anonymous: Option<Arc<Grant>>,
}

impl Authenticator {
    /// Compiles `[auth]` and applies the anonymous policy.
    ///
    /// # Errors
    /// A message naming the entry and what is wrong with it; or, for a bus listening
    /// beyond loopback with no credentials and no explicit `[auth.anonymous]`, what to
    /// add.
    pub fn new(cfg: &Config) -> Result<Authenticator, String> {
        let auth = &cfg.auth;
        let mut tokens = Vec::new();
        let mut certs = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, c) in auth.clients.iter().enumerate() {
            let at = format!("[[auth.client]] #{} ({:?})", i + 1, c.name);
            if c.name.is_empty() {
                return Err(format!("{at}: name is required"));
            }
            if c.name == "anonymous" || !names.insert(c.name.as_str()) {
                return Err(format!("{at}: the name is taken"));
            }
            let grant = Grant::compile(c).map_err(|e| format!("{at}: {e}"))?;
            if c.token_hash.is_none() && c.cert_sha256.is_none() {
                return Err(format!("{at}: needs token_hash or cert_sha256"));
            }
            if let Some(h) = &c.token_hash {
                let (salt, digest) = parse_hash(h).ok_or_else(|| {
                    format!("{at}: token_hash must be sha256:<salt hex>:<64 hex digits> (avbus token new)")
                })?;
                tokens.push(TokenEntry {
                    salt,
                    digest,
                    grant: grant.clone(),
                });
            }
            if let Some(fp) = &c.cert_sha256 {
                let fp = parse_fingerprint(fp)
                    .ok_or_else(|| format!("{at}: cert_sha256 must be 64 hex digits"))?;
                if !cfg.tls.as_ref().is_some_and(|t| t.client_certs) {
                    return Err(format!(
                        "{at}: cert_sha256 needs [tls] with client_certs = true"
                    ));
                }
                certs.push((fp, grant));
            }
        }
        let anonymous = match &auth.anonymous {
            Some(r) => {
                if r.token_hash.is_some() || r.cert_sha256.is_some() {
                    return Err(
                        "[auth.anonymous]: takes rules only, no token_hash or cert_sha256".into(),
                    );
                }
                let rules = ClientRules {
                    name: "anonymous".into(),
                    ..r.clone()
                };
                Some(Grant::compile(&rules).map_err(|e| format!("[auth.anonymous]: {e}"))?)
            }
            None if auth.clients.is_empty() && cfg.beyond_loopback() => {
                return Err(format!(
                    "the bus listens on {} beyond loopback and [auth] has no client: \
                     add [[auth.client]] entries (avbus token new), or allow anonymous \
                     clients explicitly with [auth.anonymous] all = true (anyone who \
                     reaches the port then controls everything)",
                    cfg.listen.tcp
                ));
            }
            None if auth.clients.is_empty() => Some(Grant::everything("anonymous")),
            None => None,
        };
        Ok(Authenticator {
            tokens,
            certs,
            anonymous,
        })
    }

    /// The grant of a client certificate's fingerprint, if an entry names it.
    pub fn by_cert(&self, fingerprint: &[u8; 32]) -> Option<Arc<Grant>> {
        self.certs
            .iter()
            .find(|(fp, _)| bool::from(fp.ct_eq(fingerprint)))
            .map(|(_, g)| g.clone())
    }

    /// Whether anonymous clients are accepted.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Decides who a client is from `hello.credentials` (nil, or `{token: str}`) and
    /// the grant of its TLS client certificate, if it presented a known one. A token,
    /// when given, decides alone.
    ///
    /// # Errors
    /// [`AuthRefusal`].
    pub fn authenticate(
        &self,
        credentials: &Value,
        cert: Option<Arc<Grant>>,
    ) -> Result<Arc<Grant>, AuthRefusal> {
        let token = match credentials {
            Value::Nil => None,
            Value::Map(m) => {
                let t = m
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("token"))
                    .map(|(_, v)| v);
                match t {
                    Some(Value::String(s)) => Some(s.as_str().ok_or(AuthRefusal::Wrong)?),
                    Some(Value::Nil) | None => None,
                    Some(_) => return Err(AuthRefusal::Wrong),
                }
            }
            _ => return Err(AuthRefusal::Wrong),
        };
        let Some(token) = token else {
            return cert
                .or_else(|| self.anonymous.clone())
                .ok_or(AuthRefusal::Missing);
        };
        // Compare with every entry, whatever matched, so that the time taken does not
        // depend on which entry (if any) holds the token.
        let mut found: Option<&Arc<Grant>> = None;
        for e in &self.tokens {
            let hit = digest(&e.salt, token).ct_eq(&e.digest);
            if bool::from(hit) {
                found = Some(&e.grant);
            }
        }
        found.cloned().ok_or(AuthRefusal::Wrong)
    }
}

fn parse_hash(s: &str) -> Option<(Vec<u8>, [u8; 32])> {
    let mut parts = s.split(':');
    if parts.next()? != "sha256" {
        return None;
    }
    let salt = unhex(parts.next()?)?;
    let digest = unhex(parts.next()?)?.try_into().ok()?;
    if parts.next().is_some() || salt.is_empty() {
        return None;
    }
    Some((salt, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientRules;

    fn cfg(clients: Vec<ClientRules>) -> Config {
        let mut c = Config::default();
        c.auth.clients = clients;
        c
    }

    fn creds(token: &str) -> Value {
        Value::Map(vec![(Value::from("token"), Value::from(token))])
    }

    #[test]
    fn a_token_matches_its_hash_only() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64);
        let a = Authenticator::new(&cfg(vec![ClientRules {
            name: "panel".into(),
            token_hash: Some(hash_token(&t)),
            read: vec!["boardroom/#".into()],
            ..ClientRules::default()
        }]))
        .unwrap();
        assert_eq!(&*a.authenticate(&creds(&t), None).unwrap().name, "panel");
        assert_eq!(
            a.authenticate(&creds(&new_token()), None).unwrap_err(),
            AuthRefusal::Wrong
        );
        assert_eq!(
            a.authenticate(&Value::from(3), None).unwrap_err(),
            AuthRefusal::Wrong
        );
        // Credentials configured: anonymous is refused (not a guess).
        assert_eq!(
            a.authenticate(&Value::Nil, None).unwrap_err(),
            AuthRefusal::Missing
        );
    }

    #[test]
    fn equal_tokens_hash_differently() {
        let t = new_token();
        assert_ne!(hash_token(&t), hash_token(&t));
    }

    #[test]
    fn anonymous_policy_follows_the_listen_address() {
        let a = Authenticator::new(&Config::default()).unwrap();
        assert!(a.anonymous_allowed());
        let mut open = Config::default();
        open.listen.tcp = "0.0.0.0:7420".parse().unwrap();
        let e = Authenticator::new(&open).err().unwrap();
        assert!(
            e.contains("beyond loopback") && e.contains("[auth.anonymous]"),
            "{e}"
        );
        open.auth.anonymous = Some(ClientRules {
            all: true,
            ..ClientRules::default()
        });
        assert!(Authenticator::new(&open).unwrap().anonymous_allowed());
    }

    #[test]
    fn malformed_entries_are_named() {
        let e = Authenticator::new(&cfg(vec![ClientRules {
            name: "x".into(),
            token_hash: Some("md5:00:11".into()),
            ..ClientRules::default()
        }]))
        .err()
        .unwrap();
        assert!(e.contains("#1") && e.contains("token_hash"), "{e}");
        let e = Authenticator::new(&cfg(vec![ClientRules {
            name: "x".into(),
            ..ClientRules::default()
        }]))
        .err()
        .unwrap();
        assert!(e.contains("token_hash or cert_sha256"), "{e}");
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hexed = fingerprint_hex(b"cert");
        let colons: Vec<String> = hexed
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(
            parse_fingerprint(&hexed),
            parse_fingerprint(&colons.join(":"))
        );
        assert!(parse_fingerprint(&hexed).is_some());
        assert!(parse_fingerprint("abc").is_none());
    }
}
