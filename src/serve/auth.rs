//! Who may call the in-line API: bearer tokens from a file, and TLS with
//! rustls (optionally requiring a client certificate signed by a given CA:
//! mTLS). A call that fails either is refused before any decoding or scoring.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

use crate::config::InlineSection;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{key}: cannot read {path:?}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("inline.bearer_tokens_file: {0:?} holds no token")]
    NoTokens(String),
    #[error("{key}: {why}")]
    Pem { key: &'static str, why: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// The accepted bearer tokens, kept as SHA-256 digests: a lookup compares
/// digests, so the time taken says nothing about a token's prefix.
///
/// The set is replaced whole when the file changes ([`Tokens::watch`]): a
/// rotated token takes effect without a restart, and a file that holds no
/// token (or cannot be read) leaves the set in use.
#[derive(Debug)]
pub struct Tokens {
    digests: std::sync::RwLock<HashSet<[u8; 32]>>,
}

fn digests(text: &str) -> HashSet<[u8; 32]> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| Sha256::digest(t.as_bytes()).into())
        .collect()
}

/// What identifies a version of the token file (size, mtime, inode).
fn identity(path: &str) -> Option<(u64, Option<std::time::SystemTime>, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), crate::reload::file_id(&m)))
}

impl Tokens {
    /// Parses a token file: one token a line, blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Tokens {
        Tokens {
            digests: std::sync::RwLock::new(digests(text)),
        }
    }

    /// Re-reads `path` every `every` and swaps in its tokens when the file
    /// changed. Runs until aborted.
    pub fn watch(
        self: Arc<Tokens>,
        path: String,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut seen = identity(&path);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let p = path.clone();
                let Ok((now, text)) = tokio::task::spawn_blocking(move || {
                    (identity(&p), std::fs::read_to_string(&p))
                })
                .await
                else {
                    return;
                };
                if now == seen {
                    continue;
                }
                match text {
                    Ok(t) if !digests(&t).is_empty() => {
                        let d = digests(&t);
                        let n = d.len();
                        *self
                            .digests
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = d;
                        tracing::info!(tokens = n, "inline.bearer_tokens_file reloaded");
                        seen = now;
                    }
                    Ok(_) => {
                        tracing::error!(path = %path, "inline.bearer_tokens_file holds no token; the tokens in use stay");
                        seen = now;
                    }
                    Err(e) => {
                        tracing::error!(path = %path, error = %e, "inline.bearer_tokens_file unreadable; the tokens in use stay");
                    }
                }
            }
        })
    }

    /// Loads `inline.bearer_tokens_file`; None when it is not set.
    pub fn load(path: &str) -> Result<Option<Arc<Tokens>>, AuthError> {
        if path.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            key: "inline.bearer_tokens_file",
            path: path.to_string(),
            source,
        })?;
        let t = Tokens::parse(&text);
        if t.digests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
        {
            return Err(AuthError::NoTokens(path.to_string()));
        }
        Ok(Some(Arc::new(t)))
    }

    /// Whether an `authorization` header value carries an accepted token.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(v) = authorization else {
            return false;
        };
        let Some(token) = v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| v.get(7..))
        else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        self.digests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&d)
    }
}

/// PEM bytes of the TLS files, read once at start.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        key,
        path: path.to_string(),
        source,
    })
}

impl TlsFiles {
    /// None when TLS is off (`inline.tls_cert` empty).
    pub fn load(cfg: &InlineSection) -> Result<Option<TlsFiles>, AuthError> {
        if cfg.tls_cert.is_empty() {
            return Ok(None);
        }
        let files = TlsFiles {
            cert: read("inline.tls_cert", &cfg.tls_cert)?,
            key: read("inline.tls_key", &cfg.tls_key)?,
            client_ca: if cfg.tls_client_ca.is_empty() {
                None
            } else {
                Some(read("inline.tls_client_ca", &cfg.tls_client_ca)?)
            },
        };
        // Fail at start, naming the key, rather than at the first handshake.
        files.rustls_config()?;
        Ok(Some(files))
    }

    /// The rustls server configuration for the HTTP listener (ALPN http/1.1).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, AuthError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |key: &'static str| {
            move |e: rustls::pki_types::pem::Error| AuthError::Pem {
                key,
                why: e.to_string(),
            }
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(pem("inline.tls_cert"))?;
        if certs.is_empty() {
            return Err(AuthError::Pem {
                key: "inline.tls_cert",
                why: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(pem("inline.tls_key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| AuthError::Tls(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(c.map_err(pem("inline.tls_client_ca"))?)
                        .map_err(|e| AuthError::Pem {
                            key: "inline.tls_client_ca",
                            why: e.to_string(),
                        })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| AuthError::Pem {
                    key: "inline.tls_client_ca",
                    why: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| AuthError::Pem {
                key: "inline.tls_key",
                why: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The tonic TLS configuration for the gRPC listener.
    pub fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        let mut c = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            c = c.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let t = Tokens::parse("# switch A\ns3cret-a\n\n  s3cret-b  \n");
        assert!(t.allows(Some(b"Bearer s3cret-a")));
        assert!(t.allows(Some(b"bearer s3cret-b")));
        assert!(!t.allows(Some(b"Bearer s3cret")));
        assert!(!t.allows(Some(b"Basic s3cret-a")));
        assert!(!t.allows(Some(b"s3cret-a")));
        assert!(!t.allows(Some(b"Bearer # switch A")));
        assert!(!t.allows(None));
    }
}
