//! The SSRF guard against real HTTP on loopback: a target server on 127.0.0.1 that no URL form,
//! redirect or proxy may reach, and an allowed server on 127.0.0.2 (all of 127.0.0.0/8 is
//! loopback on Linux) that the fetcher does reach, so that the tests can fail.

use std::sync::Mutex;
use std::time::Duration;

use ocrfleet_worker::config::FetchConfig;
use ocrfleet_worker::fetch::{FetchError, Fetcher};

/// Serialises the proxy test's changes to the environment with the other tests' clients,
/// which read it when they are built.
static ENV: Mutex<()> = Mutex::new(());

mod common;
use common::loopback::{response, Loopback as Server};

/// Asserts that nothing ever connected to `server`.
fn assert_untouched(server: &Server, what: &str) {
    assert_eq!(
        server.connections(),
        0,
        "{what}: {} was reached",
        server.addr
    );
    assert_eq!(server.requests(), 0, "{what}");
}

/// Replies "allowed" to every request.
async fn allowed_server() -> Server {
    Server::start("127.0.0.2", |_, _| response("200 OK", "", b"allowed")).await
}

/// The target the tests must not reach; it would reply "target".
async fn target_server() -> Server {
    Server::start("127.0.0.1", |_, _| response("200 OK", "", b"target")).await
}

/// A fetcher that may reach only 127.0.0.2, built while no test changes the environment.
fn fetcher() -> Fetcher {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    build_fetcher()
}

fn build_fetcher() -> Fetcher {
    Fetcher::new(FetchConfig {
        concurrency: 4,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        attempts: 2,
        backoff: Duration::from_millis(10),
        max_bytes: 1 << 20,
        max_redirects: 5,
        allow: vec!["127.0.0.2/32".parse().unwrap()],
        nat64: Vec::new(),
        ca_cert: None,
        hosts: Default::default(),
        probe_url: None,
    })
    .unwrap()
}

/// Fetches `url`, expecting a refusal by the SSRF guard.
async fn assert_refused(f: &Fetcher, url: &str) {
    match f.fetch(url).await {
        Err((FetchError::Refused(r), attempts)) => {
            assert!(
                attempts <= 1,
                "{url}: refused after {attempts} attempts ({r})"
            )
        }
        Err((e, _)) => panic!("{url}: expected a refusal, got {e} ({})", e.class()),
        Ok(got) => panic!("{url}: fetched {:?}", String::from_utf8_lossy(&got.bytes)),
    }
}

#[tokio::test]
async fn every_form_of_a_refused_address_is_refused_before_connecting() {
    let allowed = allowed_server().await;
    let target = target_server().await;
    let f = fetcher();

    let ok = f
        .fetch(&format!("http://127.0.0.2:{}/a.png", allowed.port()))
        .await
        .expect("the allowed host is fetched");
    assert_eq!(ok.bytes, b"allowed");

    let port = target.port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://127.1:{port}/x"),
        format!("http://2130706433:{port}/x"),
        format!("http://0x7f.1:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://[::127.0.0.1]:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://[64:ff9b::7f00:1]:{port}/x"),
    ] {
        assert_refused(&f, &url).await;
    }
    assert_untouched(&target, "literal and DNS forms");
}

#[tokio::test]
async fn redirect_to_a_refused_address_is_not_followed() {
    let target = target_server().await;
    let port = target.port();
    let redirector = Server::start("127.0.0.2", move |_, line| {
        let to = if line.contains("/by-name") {
            format!("http://localhost:{port}/x")
        } else {
            format!("http://127.0.0.1:{port}/x")
        };
        response("302 Found", &format!("Location: {to}\r\n"), b"")
    })
    .await;
    let f = fetcher();
    for path in ["by-address", "by-name"] {
        assert_refused(
            &f,
            &format!("http://127.0.0.2:{}/{path}", redirector.port()),
        )
        .await;
    }
    assert_eq!(redirector.requests(), 2);
    assert_untouched(&target, "redirects");
}

#[tokio::test]
async fn proxy_environment_is_ignored() {
    let allowed = allowed_server().await;
    let target = target_server().await;
    // A proxy on the allowed address that would fetch anything: it answers itself.
    let proxy = Server::start("127.0.0.2", |_, _| response("200 OK", "", b"proxied")).await;
    let proxy_url = format!("http://127.0.0.2:{}", proxy.port());
    let vars = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    let f = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let saved: Vec<_> = vars
            .iter()
            .chain(&["NO_PROXY", "no_proxy"])
            .map(|v| (*v, std::env::var_os(v)))
            .collect();
        for v in vars {
            std::env::set_var(v, &proxy_url);
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
        let f = build_fetcher();
        for (v, value) in saved {
            match value {
                Some(value) => std::env::set_var(v, value),
                None => std::env::remove_var(v),
            }
        }
        f
    };

    assert_refused(&f, &format!("http://localhost:{}/x", target.port())).await;
    let ok = f
        .fetch(&format!("http://127.0.0.2:{}/a.png", allowed.port()))
        .await
        .expect("the allowed host is fetched directly");
    assert_eq!(ok.bytes, b"allowed");
    assert_untouched(&proxy, "proxy");
    assert_untouched(&target, "through a proxy");
}
