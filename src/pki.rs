//! Per-group certificates and rustls configurations (pure: no files, no clock, no network).
//!
//! Each group has its own CA. Members get one certificate valid for both server and client
//! authentication (they serve gRPC and dial their peers); the operator gets a client-only
//! certificate. Every leaf names who it speaks for in a URI subject alternative name
//! ([`Identity`]): the agents authorize each RPC by it (the CA says *which group*, the identity
//! says *member or operator*). The rustls configurations always use the `ring` provider explicitly, never the
//! process default, so nothing depends on which provider another crate installed.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what} contains no certificate")]
    NoCertificate { what: &'static str },
    #[error("building the TLS configuration: {0}")]
    Tls(String),
    #[error("invalid DNS name {name:?} for a certificate")]
    DnsName { name: String },
    #[error("invalid validity window: {0}")]
    Validity(String),
}

/// Who a certificate speaks for, written as a SPIFFE-style URI subject alternative name:
/// `spiffe://quorate.dev/member/NAME` or `spiffe://quorate.dev/operator`. Which group it belongs
/// to is proven by the group CA that signed it, so the URI does not repeat it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Member(String),
    Operator,
}

const IDENTITY_PREFIX: &str = "spiffe://quorate.dev/";

impl Identity {
    pub fn uri(&self) -> String {
        match self {
            Identity::Member(name) => format!("{IDENTITY_PREFIX}member/{name}"),
            Identity::Operator => format!("{IDENTITY_PREFIX}operator"),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        match uri.strip_prefix(IDENTITY_PREFIX)? {
            "operator" => Some(Identity::Operator),
            rest => rest
                .strip_prefix("member/")
                .filter(|name| !name.is_empty() && !name.contains('/'))
                .map(|name| Identity::Member(name.to_owned())),
        }
    }

    /// The identity of a DER certificate (the first quorate URI name); `None` when it has none
    /// or does not parse.
    ///
    /// One exception, for upgrades: a certificate without a URI name that allows server
    /// authentication is a member's certificate issued before identities existed (only member
    /// certificates ever had `serverAuth`; the operator's was client-only, and the operator
    /// replaces its own before it talks to any agent). While an upgrade rolls the members, the
    /// new ones must accept Raft from the old ones, or the roll stalls on the first new member.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok().flatten();
        let named = san.and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Self::from_uri(uri),
                _ => None,
            })
        });
        if named.is_some() {
            return named;
        }
        let legacy_member = !cert.is_ca()
            && cert
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|eku| eku.value.server_auth);
        legacy_member.then(|| {
            let name = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or_default();
            Identity::Member(name.to_owned())
        })
    }
}

impl Identity {
    /// The identity of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> Option<Self> {
        let first = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()?
            .ok()?;
        Self::of_certificate(&first)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Member(name) => write!(f, "member {name}"),
            Identity::Operator => f.write_str("the operator"),
        }
    }
}

/// The days (UTC) a certificate is valid: from the start of `not_before` to the start of
/// `not_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: jiff::civil::Date,
    pub not_after: jiff::civil::Date,
}

impl Validity {
    /// `days` days from `today` (one day of slack backwards for clock skew).
    pub fn days_from(today: jiff::civil::Date, days: i32) -> Result<Self, PkiError> {
        let not_before = today
            .checked_sub(jiff::Span::new().days(1))
            .map_err(|e| PkiError::Validity(e.to_string()))?;
        let not_after = today
            .checked_add(jiff::Span::new().days(days))
            .map_err(|e| PkiError::Validity(e.to_string()))?;
        Ok(Self {
            not_before,
            not_after,
        })
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::Validity(format!(
                "not_after {} is not after not_before {}",
                self.not_after, self.not_before
            )));
        }
        let month = |d: jiff::civil::Date| d.month() as u8;
        let day = |d: jiff::civil::Date| d.day() as u8;
        params.not_before = rcgen::date_time_ymd(
            i32::from(self.not_before.year()),
            month(self.not_before),
            day(self.not_before),
        );
        params.not_after = rcgen::date_time_ymd(
            i32::from(self.not_after.year()),
            month(self.not_after),
            day(self.not_after),
        );
        Ok(())
    }
}

/// A group CA. Keep all three fields: issuing needs the common name to rebuild the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCa {
    pub common_name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate with its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

fn ca_params(common_name: &str, validity: &Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "quorate");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity.apply(&mut params)?;
    Ok(params)
}

/// Generates a new CA for one group, e.g. `generate_group_ca("quorate shop/cache", validity)`.
pub fn generate_group_ca(common_name: &str, validity: &Validity) -> Result<GroupCa, PkiError> {
    let key = KeyPair::generate().map_err(generate("CA key"))?;
    let params = ca_params(common_name, validity)?;
    let cert = params
        .self_signed(&key)
        .map_err(generate("CA certificate"))?;
    Ok(GroupCa {
        common_name: common_name.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &GroupCa, validity: &Validity) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Pem {
        what: "CA key",
        reason: e.to_string(),
    })?;
    Ok(Issuer::new(ca_params(&ca.common_name, validity)?, key))
}

fn leaf(
    ca: &GroupCa,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    identity: Option<&Identity>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    validity: &Validity,
) -> Result<CertifiedKey, PkiError> {
    let issuer = issuer(ca, validity)?;
    let key = KeyPair::generate().map_err(generate("certificate key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "quorate");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    for name in dns_names {
        let dns = name
            .clone()
            .try_into()
            .map_err(|_| PkiError::DnsName { name: name.clone() })?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    if let Some(identity) = identity {
        let uri = identity.uri();
        let uri = uri
            .clone()
            .try_into()
            .map_err(|_| PkiError::DnsName { name: uri })?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    validity.apply(&mut params)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate("certificate"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A member's certificate: server and client authentication, for the given names and addresses
/// (e.g. `cache-1.cache-peers.shop.svc.cluster.local`, `cache-1.cache-peers`), speaking for
/// [`Identity::Member`] `member`.
pub fn issue_member_certificate(
    ca: &GroupCa,
    member: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    validity: &Validity,
) -> Result<CertifiedKey, PkiError> {
    leaf(
        ca,
        member,
        dns_names,
        ips,
        Some(&Identity::Member(member.to_owned())),
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        validity,
    )
}

/// A client-only certificate named `name`, speaking for `identity` (the operator's is
/// `Some(&Identity::Operator)`; one with no identity is refused every RPC).
pub fn issue_client_certificate(
    ca: &GroupCa,
    name: &str,
    identity: Option<&Identity>,
    validity: &Validity,
) -> Result<CertifiedKey, PkiError> {
    leaf(
        ca,
        name,
        &[],
        &[],
        identity,
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        validity,
    )
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { what });
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: presents `cert_pem`, and requires a client certificate signed by `ca_pem`.
/// ALPN `h2` (gRPC).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("certificate", cert_pem)?, private_key(key_pem)?)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client side: verifies the server against `ca_pem` and presents `cert_pem`. ALPN `h2`.
pub fn client_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs("certificate", cert_pem)?, private_key(key_pem)?)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client side without a certificate of its own (only useful to show it is refused).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn validity() -> Validity {
        match Validity::days_from(jiff::civil::date(2026, 1, 10), 365) {
            Ok(v) => v,
            Err(e) => panic!("validity: {e}"),
        }
    }

    /// Handshake over an in-memory duplex stream; returns what the server read.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Vec<u8>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| e.to_string())?;
        let server_side = async move {
            let mut tls = acceptor.accept(a).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        };
        let client_side = async move {
            let mut tls = connector
                .connect(name, b)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        };
        let (server_result, client_result) = tokio::join!(server_side, client_side);
        let _keep_open = client_result?;
        server_result
    }

    #[tokio::test]
    async fn member_certificates_complete_a_mutual_handshake()
    -> Result<(), Box<dyn std::error::Error>> {
        let v = validity();
        let ca = generate_group_ca("quorate test/cache", &v)?;
        let a = issue_member_certificate(
            &ca,
            "cache-0",
            &["cache-0.cache-peers".into()],
            &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
            &v,
        )?;
        let b = issue_member_certificate(&ca, "cache-1", &["cache-1.cache-peers".into()], &[], &v)?;
        let server = server_config(&a.cert_pem, &a.key_pem, &ca.cert_pem)?;
        let client = client_config(&b.cert_pem, &b.key_pem, &ca.cert_pem)?;
        assert_eq!(
            handshake(server.clone(), client.clone(), "cache-0.cache-peers").await?,
            b"hello"
        );
        assert_eq!(
            handshake(server.clone(), client.clone(), "127.0.0.2").await?,
            b"hello"
        );
        // The operator's client-only certificate is accepted too.
        let op = issue_client_certificate(&ca, "quorate-operator", Some(&Identity::Operator), &v)?;
        let op_client = client_config(&op.cert_pem, &op.key_pem, &ca.cert_pem)?;
        assert_eq!(
            handshake(server.clone(), op_client, "cache-0.cache-peers").await?,
            b"hello"
        );
        // Wrong name: refused by the client.
        assert!(
            handshake(server, client, "cache-9.cache-peers")
                .await
                .is_err()
        );
        Ok(())
    }

    #[tokio::test]
    async fn clients_without_a_group_certificate_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let v = validity();
        let ca = generate_group_ca("group a", &v)?;
        let other_ca = generate_group_ca("group b", &v)?;
        let member = issue_member_certificate(&ca, "m-0", &["m-0".into()], &[], &v)?;
        let server = server_config(&member.cert_pem, &member.key_pem, &ca.cert_pem)?;
        // No certificate at all.
        let anonymous = anonymous_client_config(&ca.cert_pem)?;
        assert!(handshake(server.clone(), anonymous, "m-0").await.is_err());
        // A certificate from another group's CA.
        let stranger = issue_member_certificate(&other_ca, "m-0", &["m-0".into()], &[], &v)?;
        let stranger_client = client_config(&stranger.cert_pem, &stranger.key_pem, &ca.cert_pem)?;
        assert!(
            handshake(server.clone(), stranger_client, "m-0")
                .await
                .is_err()
        );
        // And a client of the other group does not trust this server.
        let wary = client_config(&stranger.cert_pem, &stranger.key_pem, &other_ca.cert_pem)?;
        assert!(handshake(server, wary, "m-0").await.is_err());
        Ok(())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        match certs("test certificate", pem) {
            Ok(mut c) if !c.is_empty() => c.remove(0),
            other => panic!("no certificate: {other:?}"),
        }
    }

    #[test]
    fn certificates_carry_the_identity_they_were_issued_for() -> Result<(), PkiError> {
        let v = validity();
        let ca = generate_group_ca("quorate test/cache", &v)?;
        let member = issue_member_certificate(&ca, "cache-1", &["cache-1.p".into()], &[], &v)?;
        assert_eq!(
            Identity::of_certificate(&der(&member.cert_pem)),
            Some(Identity::Member("cache-1".into()))
        );
        let op = issue_client_certificate(&ca, "quorate-operator", Some(&Identity::Operator), &v)?;
        assert_eq!(
            Identity::of_certificate(&der(&op.cert_pem)),
            Some(Identity::Operator)
        );
        let anonymous = issue_client_certificate(&ca, "someone", None, &v)?;
        assert_eq!(Identity::of_certificate(&der(&anonymous.cert_pem)), None);
        // A member certificate issued before identities (server and client authentication, no
        // URI name) is a member's; the CA itself speaks for nobody; garbage does not parse.
        let issuer = issuer(&ca, &v)?;
        let key = KeyPair::generate().map_err(generate("key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "cache-member");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let legacy = params
            .signed_by(&key, &issuer)
            .map_err(generate("legacy certificate"))?;
        assert_eq!(
            Identity::of_certificate(legacy.der()),
            Some(Identity::Member("cache-member".into()))
        );
        assert_eq!(Identity::of_certificate(&der(&ca.cert_pem)), None);
        assert_eq!(Identity::of_certificate(b"garbage"), None);
        Ok(())
    }

    #[test]
    fn identity_uris_round_trip_and_reject_look_alikes() {
        for id in [Identity::Operator, Identity::Member("db-0".into())] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in [
            "spiffe://quorate.dev/member/",
            "spiffe://quorate.dev/member/a/b",
            "spiffe://quorate.dev/operators",
            "spiffe://example.com/operator",
            "urn:quorate:operator",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_pem_and_names_are_errors_not_panics() {
        assert!(server_config("garbage", "garbage", "garbage").is_err());
        assert!(client_config("", "", "").is_err());
        let v = validity();
        let ca = GroupCa {
            common_name: "x".into(),
            cert_pem: String::new(),
            key_pem: "not a key".into(),
        };
        assert!(issue_client_certificate(&ca, "op", None, &v).is_err());
        let Ok(ca) = generate_group_ca("x", &v) else {
            panic!("CA generation failed");
        };
        assert!(
            issue_member_certificate(&ca, "m", &["n\u{e4}m\u{e9}.example".into()], &[], &v)
                .is_err()
        );
        let backwards = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert!(generate_group_ca("x", &backwards).is_err());
    }
}
