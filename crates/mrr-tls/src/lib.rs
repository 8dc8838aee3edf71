//! Transport security: a region's certificate, key and cluster CA, checked the moment they are
//! loaded; certificates made for a cluster (`mrr certs`); and a region's identity in its
//! certificate.
//!
//! **Identity.** Every region's certificate names the region as the DNS name
//! `<region>.regions.mrr` (besides the host names peers and clients dial), and is issued by
//! the cluster's own CA. A peer is then checked for the region it claims, not for the host it
//! connects from: a holder of us-west's certificate cannot pass as eu-central, whatever
//! address it uses ([`check_peer_region`]).
//!
//! **Checked at load.** A certificate that does not match its key, is not signed by the CA,
//! has expired or is not yet valid, or does not name the region stops start-up with an error
//! naming the file and the fix ([`Material::load`]), rather than failing at the first
//! connection.
//!
//! Not here: sockets, listeners, reloading (the transports own those), and the config keys
//! that name the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use rustls;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
pub use rustls_pki_types::UnixTime;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The DNS zone that names regions in certificates.
pub const REGION_ZONE: &str = "regions.mrr";

/// The name a region's certificate carries: `<region>.regions.mrr`.
pub fn region_dns_name(region: &str) -> String {
    format!("{region}.{REGION_ZONE}")
}

/// Why certificates could not be loaded, made, or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no {what} in it ({message}); {hint}")]
    Pem { path: PathBuf, what: &'static str, message: String, hint: &'static str },
    #[error("{key} is not the private key of {cert} ({message}): use the key made with that certificate (`mrr certs` writes them in pairs)")]
    KeyMismatch { cert: PathBuf, key: PathBuf, message: String },
    #[error("{cert} is not accepted under the CA in {ca}: {message}; {hint}")]
    Rejected { cert: PathBuf, ca: PathBuf, message: String, hint: String },
    #[error("the peer's certificate does not name region {region} ({name}): {message}")]
    PeerNotRegion { region: String, name: String, message: String },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("{0:?} is not a region name a certificate can carry")]
    BadRegion(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider every configuration uses (aws-lc-rs, as tonic's `tls-aws-lc`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process's default crypto provider, unless one is installed already.
/// Every process that opens a TLS connection calls it before its first one: libraries that
/// build rustls configurations themselves (reqwest, tonic) take the process default.
pub fn install_default_provider() {
    // Err means a provider is installed already (ours or the embedding program's): keep it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Where a region's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The region's certificate (PEM; the chain up to, not including, the CA may follow it).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The cluster's CA certificate (PEM): every peer's certificate must chain to it.
    pub ca: PathBuf,
}

/// A region's certificate chain, key and the cluster's CA, checked together, with the PEM text
/// they were read from (each file is read once).
#[derive(Debug)]
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: Vec<CertificateDer<'static>>,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    roots: Arc<rustls::RootCertStore>,
}

/// The largest PEM file read: a certificate chain or a key is a few kilobytes, and a path such
/// as /dev/zero must be refused, not read until memory runs out.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<String, TlsError> {
    use std::io::Read as _;
    let failed = |source| TlsError::Read { path: path.to_owned(), source };
    let mut text = String::new();
    std::fs::File::open(path).and_then(|f| f.take(PEM_FILE_BYTES_MAX + 1).read_to_string(&mut text)).map_err(failed)?;
    if text.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(failed(std::io::Error::other(format!("larger than {PEM_FILE_BYTES_MAX} bytes"))));
    }
    Ok(text)
}

fn certificates(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    let hint = "write the certificate as PEM (-----BEGIN CERTIFICATE-----), as `mrr certs` does";
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(TlsError::Pem { path: path.to_owned(), what: "certificate", message: "none found".into(), hint }),
        Err(e) => Err(TlsError::Pem { path: path.to_owned(), what: "certificate", message: e.to_string(), hint }),
    }
}

impl Material {
    /// Loads and checks a region's files at `now`: the key is the certificate's, the
    /// certificate chains to the CA for both server and client use, is valid now, and names
    /// `region`.
    pub fn load(paths: &TlsPaths, region: &str, now: UnixTime) -> Result<Self, TlsError> {
        let (cert_pem, key_pem, ca_pem) = (read(&paths.cert)?, read(&paths.key)?, read(&paths.ca)?);
        let chain = certificates(&paths.cert, &cert_pem)?;
        let ca = certificates(&paths.ca, &ca_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            path: paths.key.clone(),
            what: "private key",
            message: e.to_string(),
            hint: "write the key as PEM (-----BEGIN PRIVATE KEY-----), as `mrr certs` does",
        })?;
        let provider = provider();
        let signer = provider.key_provider.load_private_key(key.clone_key()).map_err(|e| TlsError::KeyMismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
            message: e.to_string(),
        })?;
        rustls::sign::CertifiedKey::new(chain.clone(), signer).keys_match().map_err(|e| TlsError::KeyMismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
            message: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &ca {
            roots.add(c.clone()).map_err(|e| TlsError::Rejected {
                cert: paths.ca.clone(),
                ca: paths.ca.clone(),
                message: e.to_string(),
                hint: "the CA file must hold the cluster CA's certificate (ca.pem from `mrr certs`)".into(),
            })?;
        }
        let roots = Arc::new(roots);
        let rejected = |message: String| TlsError::Rejected {
            cert: paths.cert.clone(),
            ca: paths.ca.clone(),
            message,
            hint: format!(
                "make the region's certificate from this CA with `mrr certs`; it must name {} and be valid now",
                region_dns_name(region)
            ),
        };
        let name = ServerName::try_from(region_dns_name(region)).map_err(|_| TlsError::BadRegion(region.to_owned()))?;
        // As a server: the chain, the validity period, serverAuth, and the region's name.
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rejected(e.to_string()))?
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
            .map_err(|e| rejected(e.to_string()))?;
        // As a client of the other regions: clientAuth too.
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| rejected(e.to_string()))?
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map_err(|e| rejected(e.to_string()))?;
        Ok(Self { chain, key, ca, cert_pem, key_pem, ca_pem, roots })
    }

    /// A server that requires every client to present a certificate of the cluster's CA
    /// (mutual TLS), offering HTTP/2 for gRPC.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client that trusts only the cluster's CA and presents this region's certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Material {
    /// The HTTP API's server: this region's certificate, no client certificate asked (clients
    /// prove themselves with API keys), HTTP/2 and HTTP/1.1.
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client of the regions' HTTPS APIs that trusts only the CA(s) in `ca_pem`: for the Rust
/// client, the tools and the forwarder.
pub fn api_client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let hint = "pass the cluster CA's certificate (ca.pem from `mrr certs`)";
    let certs = CertificateDer::pem_slice_iter(ca_pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        path: PathBuf::from("<CA>"),
        what: "certificate",
        message: e.to_string(),
        hint,
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: PathBuf::from("<CA>"),
            what: "certificate",
            message: "none found".into(),
            hint,
        });
    }
    for c in certs {
        roots.add(c)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A region's TLS material as loaded at one moment: swapped whole when its files change.
pub struct Loaded {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// Mutual TLS for the peer listener.
    pub peer_server: Arc<rustls::ServerConfig>,
    /// HTTPS for the API.
    pub api_server: Arc<rustls::ServerConfig>,
    /// The region's certificate (the chain's first) and what signs with its key: checkpoints
    /// of relayed changes ([`Loaded::sign`]).
    pub cert: CertificateDer<'static>,
    signing: Arc<dyn rustls::sign::SigningKey>,
    /// The cluster CA, for checking other regions' signing certificates.
    roots: Arc<rustls::RootCertStore>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

/// What a file looked like when last loaded: its modification time and length.
type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

/// A region's TLS material that follows its files: [`LiveTls::reload_if_changed`] loads them
/// again when they change (or when asked, on SIGHUP) and swaps them in only if they pass every
/// check of [`Material::load`]; otherwise the material in use stays. New connections take the
/// current material; connections already open keep theirs, so no stream is dropped.
pub struct LiveTls {
    paths: TlsPaths,
    region: String,
    current: std::sync::RwLock<Arc<Loaded>>,
    stamp: std::sync::Mutex<Stamp>,
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls").field("paths", &self.paths).field("region", &self.region).finish_non_exhaustive()
    }
}

fn stamp(paths: &TlsPaths) -> Stamp {
    [&paths.cert, &paths.key, &paths.ca]
        .into_iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len())))
        .collect()
}

fn load_all(paths: &TlsPaths, region: &str, now: UnixTime) -> Result<Loaded, TlsError> {
    let material = Material::load(paths, region, now)?;
    let (peer_server, api_server) = (material.server_config()?, material.api_server_config()?);
    let signing = provider().key_provider.load_private_key(material.key.clone_key())?;
    Ok(Loaded {
        cert: material.chain[0].clone(),
        signing,
        roots: material.roots.clone(),
        cert_pem: material.cert_pem,
        key_pem: material.key_pem,
        ca_pem: material.ca_pem,
        peer_server,
        api_server,
    })
}

/// The SHA-256 of a certificate's DER: how checkpoints name their signer.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(cert_der).into()
}

/// Signature schemes a region key may sign with, in order of preference.
const SIGNING_SCHEMES: &[rustls::SignatureScheme] = &[
    rustls::SignatureScheme::ED25519,
    rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    rustls::SignatureScheme::RSA_PSS_SHA256,
];

impl Loaded {
    /// Signs `message` with the region's key: the certificate's fingerprint, and the scheme
    /// (two bytes, big-endian) followed by the signature.
    pub fn sign(&self, message: &[u8]) -> Result<([u8; 32], Vec<u8>), TlsError> {
        let signer = self.signing.choose_scheme(SIGNING_SCHEMES).ok_or_else(|| {
            TlsError::Config(rustls::Error::General("the region key signs with no supported scheme".into()))
        })?;
        let scheme = u16::from(signer.scheme());
        let mut out = scheme.to_be_bytes().to_vec();
        out.extend_from_slice(&signer.sign(message)?);
        Ok((fingerprint(&self.cert), out))
    }

    /// Checks that `signature` (as [`Loaded::sign`] makes them) over `message` was made with
    /// the key of `cert_der`, a certificate of the cluster CA naming `region` and valid at
    /// `at` (when the signed change was written: a certificate that expired since still
    /// proves what it signed while it was valid).
    pub fn verify_signed(
        &self,
        cert_der: &[u8],
        region: &str,
        at: UnixTime,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TlsError> {
        let refused = |message: String| TlsError::PeerNotRegion {
            region: region.to_owned(),
            name: region_dns_name(region),
            message,
        };
        let der = CertificateDer::from(cert_der);
        check_peer_region(Some(std::slice::from_ref(&der)), region)?;
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| refused(e.to_string()))?;
        let algorithms = provider().signature_verification_algorithms;
        cert.verify_for_usage(algorithms.all, &self.roots.roots, &[], at, webpki::KeyUsage::client_auth(), None, None)
            .map_err(|e| refused(format!("not a certificate of the cluster CA valid when it signed: {e}")))?;
        let (scheme, sig) = match signature {
            [a, b, rest @ ..] => (rustls::SignatureScheme::from(u16::from_be_bytes([*a, *b])), rest),
            _ => return Err(refused("an empty signature".into())),
        };
        let (_, candidates) = algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .ok_or_else(|| refused(format!("signature scheme {scheme:?} not supported")))?;
        if candidates.iter().any(|alg| cert.verify_signature(*alg, message, sig).is_ok()) {
            Ok(())
        } else {
            Err(refused("the signature does not verify with the certificate's key".into()))
        }
    }
}

impl LiveTls {
    pub fn load(paths: TlsPaths, region: &str, now: UnixTime) -> Result<Arc<Self>, TlsError> {
        let before = stamp(&paths);
        let loaded = load_all(&paths, region, now)?;
        Ok(Arc::new(Self {
            paths,
            region: region.to_owned(),
            current: std::sync::RwLock::new(Arc::new(loaded)),
            stamp: std::sync::Mutex::new(before),
            generation: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The material in use.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Grows by one at every swap: a holder of something built from the material (a channel)
    /// rebuilds it when the generation moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Loads the files again when any changed since the last attempt, or when `force`d:
    /// `Ok(true)` when new material is in use, `Ok(false)` when nothing changed, `Err` when
    /// the new files were refused (the material in use stays; the same files are not tried
    /// again until they change).
    pub fn reload_if_changed(&self, force: bool, now: UnixTime) -> Result<bool, TlsError> {
        let seen = stamp(&self.paths);
        {
            let mut last = self.stamp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && *last == seen {
                return Ok(false);
            }
            *last = seen;
        }
        let loaded = load_all(&self.paths, &self.region, now)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(true)
    }
}

/// Checks that a peer's certificate (already verified against the CA by the TLS handshake)
/// names `region`: what binds a connection to the region it claims to be.
pub fn check_peer_region(peer_chain: Option<&[CertificateDer<'_>]>, region: &str) -> Result<(), TlsError> {
    let end_entity = peer_chain.and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?;
    let name = region_dns_name(region);
    let server_name = ServerName::try_from(name.as_str()).map_err(|_| TlsError::BadRegion(region.to_owned()))?;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| TlsError::PeerNotRegion {
        region: region.to_owned(),
        name: name.clone(),
        message: e.to_string(),
    })?;
    cert.verify_is_valid_for_subject_name(&server_name).map_err(|e| TlsError::PeerNotRegion {
        region: region.to_owned(),
        name,
        message: e.to_string(),
    })
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long certificates `mrr certs` makes are valid by default.
pub const VALIDITY_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);

fn validity(params: &mut rcgen::CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little before now: a peer whose clock is a few minutes behind still accepts it.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
}

/// A new CA for `cluster`.
pub fn make_ca(cluster: &str, valid_for: Duration) -> Result<Issued, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("MRR cluster CA ({cluster})"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    validity(&mut params, valid_for);
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate for `region`, issued by `ca`: it names `<region>.regions.mrr` and every host
/// in `hosts` (DNS names or IP addresses), for both serving and dialing.
pub fn make_region(ca: &Issued, region: &str, hosts: &[String], valid_for: Duration) -> Result<Issued, TlsError> {
    ServerName::try_from(region_dns_name(region)).map_err(|_| TlsError::BadRegion(region.to_owned()))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut names = vec![region_dns_name(region)];
    names.extend(hosts.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("MRR region {region}"));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, valid_for);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, issued: &Issued) -> TlsPaths {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write");
        std::fs::write(&key, &issued.key_pem).expect("write");
        TlsPaths { cert, key, ca: dir.join("ca.pem") }
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn a_region_certificate_loads_only_with_its_key_its_ca_and_its_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = make_ca("shop", VALIDITY_DEFAULT).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
        let hosts = vec!["127.0.0.1".to_owned(), "sfo-node.mrr".to_owned()];
        let sf = write(dir.path(), "us-west", &make_region(&ca, "us-west", &hosts, VALIDITY_DEFAULT).expect("issue"));
        let tokyo =
            write(dir.path(), "ap-northeast", &make_region(&ca, "ap-northeast", &[], VALIDITY_DEFAULT).expect("issue"));
        let material = Material::load(&sf, "us-west", now()).unwrap_or_else(|e| panic!("{e}"));
        material.server_config().expect("server");
        material.client_config().expect("client");

        let err = |r: Result<Material, TlsError>| r.expect_err("refused").to_string();
        // Another region's name.
        let e = err(Material::load(&sf, "eu-central", now()));
        assert!(e.contains("us-west.pem is not accepted") && e.contains("eu-central.regions.mrr"), "{e}");
        // Another certificate's key.
        let crossed = TlsPaths { key: tokyo.key.clone(), ..sf.clone() };
        assert!(err(Material::load(&crossed, "us-west", now())).contains("is not the private key of"));
        // Another CA.
        let foreign = make_ca("other", VALIDITY_DEFAULT).expect("ca");
        std::fs::write(dir.path().join("other-ca.pem"), &foreign.cert_pem).expect("write");
        let e = err(Material::load(&TlsPaths { ca: dir.path().join("other-ca.pem"), ..sf.clone() }, "us-west", now()));
        assert!(e.contains("other-ca.pem") && e.contains("mrr certs"), "{e}");
        // Expired: loaded two years from now.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let later = UnixTime::since_unix_epoch(since_epoch + Duration::from_secs(2 * 365 * 24 * 3600));
        assert!(err(Material::load(&sf, "us-west", later)).to_lowercase().contains("expired"));
        // Not PEM, or missing.
        std::fs::write(dir.path().join("junk.pem"), "not pem").expect("write");
        let e = err(Material::load(&TlsPaths { cert: dir.path().join("junk.pem"), ..sf.clone() }, "us-west", now()));
        assert!(e.contains("junk.pem: no certificate"), "{e}");
        let e = err(Material::load(&TlsPaths { key: dir.path().join("missing.key"), ..sf.clone() }, "us-west", now()));
        assert!(e.contains("missing.key: cannot read"), "{e}");
        // Endless: refused at the bound, not read until memory runs out.
        let e = err(Material::load(&TlsPaths { ca: PathBuf::from("/dev/zero"), ..sf.clone() }, "us-west", now()));
        assert!(e.contains("/dev/zero: cannot read") && e.contains("larger than 1048576 bytes"), "{e}");
        assert_eq!(material.cert_pem, std::fs::read_to_string(&sf.cert).expect("read"), "the text it was read from");
    }

    #[test]
    fn live_material_follows_its_files_and_keeps_the_old_when_the_new_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = make_ca("shop", VALIDITY_DEFAULT).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
        let first = make_region(&ca, "us-west", &[], VALIDITY_DEFAULT).expect("issue");
        let paths = write(dir.path(), "us-west", &first);
        let live = LiveTls::load(paths.clone(), "us-west", now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((live.reload_if_changed(false, now()).expect("unchanged"), live.generation()), (false, 0));
        let second = make_region(&ca, "us-west", &[], VALIDITY_DEFAULT).expect("issue");
        write(dir.path(), "us-west", &second);
        assert!(live.reload_if_changed(true, now()).expect("valid"), "swapped");
        assert_eq!((live.current().cert_pem.clone(), live.generation()), (second.cert_pem.clone(), 1));
        // A certificate whose key is not beside it: refused, the second pair stays in use.
        std::fs::write(&paths.cert, &first.cert_pem).expect("write");
        assert!(live.reload_if_changed(false, now()).is_err());
        assert_eq!((live.current().cert_pem.clone(), live.generation()), (second.cert_pem, 1));
        assert!(!live.reload_if_changed(false, now()).expect("same files"), "not retried until they change");
    }

    #[test]
    fn a_peer_passes_only_as_the_region_its_certificate_names() {
        let ca = make_ca("shop", VALIDITY_DEFAULT).expect("ca");
        let sf = make_region(&ca, "us-west", &[], VALIDITY_DEFAULT).expect("issue");
        let der = CertificateDer::from_pem_slice(sf.cert_pem.as_bytes()).expect("pem");
        let chain = [der];
        check_peer_region(Some(&chain), "us-west").expect("its own name");
        let e = check_peer_region(Some(&chain), "eu-central").expect_err("another region").to_string();
        assert!(e.contains("does not name region eu-central"), "{e}");
        assert!(matches!(check_peer_region(None, "us-west"), Err(TlsError::NoPeerCertificate)));
        assert!(matches!(make_region(&ca, "Not A Region!", &[], VALIDITY_DEFAULT), Err(TlsError::BadRegion(_))));
    }

    #[test]
    fn a_checkpoint_signature_verifies_only_for_its_region_key_and_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = make_ca("shop", VALIDITY_DEFAULT).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
        let sf = write(dir.path(), "us-west", &make_region(&ca, "us-west", &[], VALIDITY_DEFAULT).expect("issue"));
        let eu =
            write(dir.path(), "eu-central", &make_region(&ca, "eu-central", &[], VALIDITY_DEFAULT).expect("issue"));
        let sf = load_all(&sf, "us-west", now()).unwrap_or_else(|e| panic!("{e}"));
        let eu = load_all(&eu, "eu-central", now()).unwrap_or_else(|e| panic!("{e}"));
        let (signer, signature) = sf.sign(b"link").expect("sign");
        assert_eq!(signer, fingerprint(&sf.cert));
        eu.verify_signed(&sf.cert, "us-west", now(), b"link", &signature).unwrap_or_else(|e| panic!("{e}"));

        let refused = |cert: &[u8], region: &str, at: UnixTime, msg: &[u8], sig: &[u8]| {
            eu.verify_signed(cert, region, at, msg, sig).expect_err("refused").to_string()
        };
        assert!(refused(&sf.cert, "us-west", now(), b"other", &signature).contains("does not verify"));
        assert!(refused(&sf.cert, "eu-central", now(), b"link", &signature).contains("eu-central.regions.mrr"));
        // us-west signing "as eu-central" with its own key and eu-central's certificate.
        assert!(refused(&eu.cert, "eu-central", now(), b"link", &signature).contains("does not verify"));
        // A certificate of another CA naming the region.
        let foreign = make_ca("other", VALIDITY_DEFAULT).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), &foreign.cert_pem).expect("write");
        let rogue =
            write(dir.path(), "rogue", &make_region(&foreign, "us-west", &[], VALIDITY_DEFAULT).expect("issue"));
        let rogue = load_all(&rogue, "us-west", now()).unwrap_or_else(|e| panic!("{e}"));
        let (_, rogue_sig) = rogue.sign(b"link").expect("sign");
        assert!(refused(&rogue.cert, "us-west", now(), b"link", &rogue_sig).contains("cluster CA"));
        // Signed at a time the certificate was not valid.
        assert!(refused(&sf.cert, "us-west", UnixTime::since_unix_epoch(Duration::from_secs(1)), b"link", &signature)
            .contains("cluster CA"));
        assert!(refused(&sf.cert, "us-west", now(), b"link", &[]).contains("empty signature"));
    }
}
