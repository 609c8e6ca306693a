//! `--fetch-ca-cert`: an image host whose certificate comes from a private CA (as behind a
//! TLS-inspecting corporate proxy) is refused with the built-in roots and fetched once the CA
//! file is given. Real TLS on loopback: a CA and a server certificate made by `rcgen`, served
//! by rustls.

use std::sync::Arc;
use std::time::Duration;

use ocrfleet_worker::config::FetchConfig;
use ocrfleet_worker::fetch::{FetchError, Fetcher};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tokio_rustls::rustls;

mod common;
use common::loopback::{response, Loopback};

/// A private CA (PEM) and an HTTPS server on 127.0.0.2 with a certificate it signed, which
/// answers every request with `body`.
async fn private_tls_server(body: &'static [u8]) -> (String, Loopback) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ocrfleet test private CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.2".parse().unwrap()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = Loopback::start_tls("127.0.0.2", acceptor, move |_, _| {
        response("200 OK", "", body)
    })
    .await;
    (ca.pem(), server)
}

fn fetcher(ca_cert: Option<std::path::PathBuf>) -> anyhow::Result<Fetcher> {
    Fetcher::new(FetchConfig {
        concurrency: 2,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        attempts: 1,
        backoff: Duration::from_millis(10),
        max_bytes: 1 << 20,
        max_redirects: 0,
        allow: vec!["127.0.0.2/32".parse().unwrap()],
        nat64: Vec::new(),
        ca_cert,
        hosts: Default::default(),
        probe_url: None,
    })
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_when_given() {
    let (ca_pem, server) = private_tls_server(b"image bytes").await;
    let url = format!("https://127.0.0.2:{}/a.png", server.port());

    match fetcher(None).unwrap().fetch(&url).await {
        Err((FetchError::Connect(m), _)) => {
            assert!(m.to_lowercase().contains("certificate"), "{m}")
        }
        Err((e, _)) => panic!("expected a certificate error, got {e} ({})", e.class()),
        Ok(_) => panic!("a private CA must not be trusted by default"),
    }

    let dir = std::env::temp_dir().join(format!("ocrfleet-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ca.pem");
    std::fs::write(&file, &ca_pem).unwrap();
    let got = fetcher(Some(file.clone()))
        .unwrap()
        .fetch(&url)
        .await
        .expect("fetched with the private CA trusted");
    assert_eq!(got.bytes, b"image bytes");

    // A file that holds no certificate is a start-up error, not a silent no-op.
    std::fs::write(&file, "not a certificate\n").unwrap();
    let err = fetcher(Some(file)).err().expect("refused").to_string();
    assert!(err.contains("--fetch-ca-cert"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
