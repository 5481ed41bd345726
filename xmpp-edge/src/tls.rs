//! TLS for s2s streams (rustls with the `ring` provider selected
//! explicitly: a second provider in the dependency tree would make rustls'
//! default builders panic).
//!
//! Server-to-server TLS is unusual in two ways, and both shape this module:
//!
//! * Certificates only *authenticate* when they validate against our CA
//!   roots for the peer's domain; otherwise TLS still encrypts and dialback
//!   authenticates (Prosody with `s2s_secure_auth = false` does the same).
//!   So the handshake accepts any certificate, verifying only that the peer
//!   holds its key, and [`cert_valid_for`] decides afterwards whether SASL
//!   EXTERNAL may be offered or used.
//! * Both sides present certificates: the initiating server sends its
//!   certificate as a TLS *client* certificate.

pub use crate::error::TlsError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This edge's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Loads a PEM certificate chain and private key.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::read(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::read(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::read(key, format!("no private key: {e}")))?;
    Ok(Identity { chain, key })
}

/// Loads trusted CA roots from a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::read(path, e))? {
        let c = c.map_err(|e| TlsError::read(path, e))?;
        roots.add(c).map_err(|e| TlsError::BadRoot {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots(path.to_path_buf()));
    }
    Ok(roots)
}

/// The web PKI's root certificates (Mozilla's list, as the `webpki-roots`
/// crate ships it): what a public XMPP server's certificate chains to.
pub fn system_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The roots an edge trusts: the web PKI's (when `system`) and those of a
/// PEM bundle; `None` when that leaves none.
pub fn trust_roots(
    system: bool,
    ca_file: Option<&Path>,
) -> Result<Option<RootCertStore>, TlsError> {
    let mut roots = if system {
        system_roots()
    } else {
        RootCertStore::empty()
    };
    if let Some(ca) = ca_file {
        roots.roots.extend(load_roots(ca)?.roots);
    }
    Ok((!roots.is_empty()).then_some(roots))
}

/// A self-signed identity for `domains` (each with its `*.` wildcard), for
/// edges started without a configured certificate. Returns the PEM texts
/// too, so the caller can keep them across restarts.
pub fn self_signed(domains: &[String]) -> Result<(Identity, String, String), TlsError> {
    let mut names = Vec::new();
    for d in domains {
        names.push(d.clone());
        names.push(format!("*.{d}"));
    }
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        domains
            .first()
            .cloned()
            .unwrap_or_else(|| "xmpp-ring".into()),
    );
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let id = Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Generate(e.to_string()))?,
    };
    Ok((id, cert_pem, key_pem))
}

/// Whether `chain` (leaf first) validates against `roots` for `domain`.
pub fn cert_valid_for(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    domain: &str,
) -> bool {
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(domain.to_string()) else {
        return false;
    };
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider()).build()
    else {
        return false;
    };
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .is_ok()
}

/// Accepts any certificate whose holder proves possession of its key;
/// whether it *authenticates* anyone is decided later (see module docs).
#[derive(Debug)]
struct AnyCert {
    provider: Arc<CryptoProvider>,
}

impl AnyCert {
    // Whatever the certificate, the handshake signatures are still checked
    // (the peer must hold the key of the certificate it presented); both
    // verifier traits share these.
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for AnyCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS config for streams we receive: our certificate, any client
/// certificate welcome.
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let cfg = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AnyCert { provider: p }))
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// TLS config for client (c2s) connections: our certificate, and no
/// client certificate asked for (nothing here authenticates clients by
/// certificate, and asking makes some clients prompt their user for one).
pub fn client_facing_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// TLS config for streams we initiate: any server certificate (dialback or
/// [`cert_valid_for`] authenticates), our certificate as client certificate.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert { provider: p }))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_builds_both_configs() {
        let (id, cert_pem, key_pem) = self_signed(&["ring.test".into()]).unwrap();
        assert!(cert_pem.contains("BEGIN CERTIFICATE") && key_pem.contains("PRIVATE KEY"));
        server_config(&id).unwrap();
        client_facing_config(&id).unwrap();
        client_config(&id).unwrap();
        // Self-signed: not valid against an empty root store.
        let roots = Arc::new(RootCertStore::empty());
        assert!(!cert_valid_for(&roots, &id.chain, "ring.test"));
        // But valid when it is itself the trusted root, for its names only.
        let mut r = RootCertStore::empty();
        r.add(id.chain[0].clone()).unwrap();
        let r = Arc::new(r);
        assert!(cert_valid_for(&r, &id.chain, "ring.test"));
        assert!(cert_valid_for(&r, &id.chain, "conference.ring.test"));
        assert!(!cert_valid_for(&r, &id.chain, "other.test"));
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let e = load_identity(Path::new("/nonexistent.pem"), Path::new("/nonexistent.key"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "").unwrap();
        assert!(matches!(load_roots(&p), Err(TlsError::NoRoots(_))));
    }
}
