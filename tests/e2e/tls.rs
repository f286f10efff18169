//! TLS over real sockets: the client library and the CLI against a TLS bus, client
//! certificates as credentials, and clean failures (plaintext client on the TLS
//! port, an untrusted certificate, a silent connection). Certificates and keys are
//! made at test time (rcgen) in a temporary directory; none are in the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use avbus::auth::{fingerprint_hex, hash_token, new_token};
use avbus::bus::BusHandle;
use avbus::client::{Client, ClientOptions};
use avbus::config::{ClientRules, Config, TlsConfig};
use avbus::protocol::{BusMsg, ClientMsg, ErrorCode, Role, PROTOCOL_VERSION};
use avbus::tls::TlsClient;
use avbus::value::Value;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::common::{bus, config, within, Raw};

const BIN: &str = env!("CARGO_BIN_EXE_avbus");

/// A throwaway CA, a bus certificate for 127.0.0.1 and localhost, and a client
/// certificate, written to a fresh directory removed on drop.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    client_pem: String,
    client_key: String,
    client_fingerprint: String,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "avbus-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "avbus test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let bus_key = KeyPair::generate().unwrap();
        let bus_cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&bus_key, &ca_cert, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "panel-7");
        let client_cert = cp.self_signed(&client_key).unwrap();
        let pki = Pki {
            dir,
            ca_pem: ca_cert.pem(),
            client_pem: client_cert.pem(),
            client_key: client_key.serialize_pem(),
            client_fingerprint: fingerprint_hex(client_cert.der()),
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(pki.path("bus.pem"), bus_cert.pem()).unwrap();
        std::fs::write(pki.path("bus.key"), bus_key.serialize_pem()).unwrap();
        std::fs::write(pki.path("client.pem"), &pki.client_pem).unwrap();
        std::fs::write(pki.path("client.key"), &pki.client_key).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tls(&self) -> TlsClient {
        TlsClient::from_ca_pem(self.ca_pem.as_bytes()).unwrap()
    }

    /// A TLS bus on port 0 with an operator token.
    fn config(&self, operator: &str) -> Config {
        let mut cfg = config();
        cfg.tls = Some(TlsConfig {
            cert: self.path("bus.pem"),
            key: self.path("bus.key"),
            client_certs: false,
        });
        cfg.auth.clients = vec![ClientRules {
            name: "operator".into(),
            token_hash: Some(hash_token(operator)),
            all: true,
            ..ClientRules::default()
        }];
        cfg
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_client(b: &BusHandle, pki: &Pki, token: &str) -> Client {
    let opts = ClientOptions::tls(&b.tcp.to_string(), "tls-panel", pki.tls())
        .token(token)
        .reconnect(false);
    Client::connect(opts).await.expect("TLS client connects")
}

#[tokio::test]
async fn the_client_library_speaks_tls() {
    let pki = Pki::new();
    let token = new_token();
    let b = bus(pki.config(&token)).await;
    assert!(b.tls);
    let c = tls_client(&b, &pki, &token).await;
    c.publish("lab/note", "over tls".into(), true)
        .await
        .unwrap();
    let u = c.get("lab/note").await.unwrap().expect("retained");
    assert_eq!(u.value, Value::from("over tls"));
    // The name in the certificate is checked: localhost is in it too.
    let mut tls = pki.tls();
    tls.server_name = Some("localhost".into());
    let opts = ClientOptions::tls(&b.tcp.to_string(), "by-name", tls)
        .token(&token)
        .reconnect(false);
    Client::connect(opts).await.expect("by name");
    let mut tls = pki.tls();
    tls.server_name = Some("bus.example".into());
    let opts = ClientOptions::tls(&b.tcp.to_string(), "wrong-name", tls)
        .token(&token)
        .reconnect(false);
    let e = Client::connect(opts).await.expect_err("wrong name refused");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[tokio::test]
async fn plaintext_and_untrusted_clients_fail_cleanly() {
    let pki = Pki::new();
    let token = new_token();
    let mut cfg = pki.config(&token);
    cfg.session.handshake_ms = 300;
    let b = bus(cfg).await;

    // A plaintext client is told, in plaintext, and closed.
    let mut raw = Raw::connect(b.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "plain".into(),
        role: Role::Panel,
        credentials: Value::Nil,
        resume: None,
    })
    .await;
    match raw.recv().await {
        Some(BusMsg::Error {
            code: ErrorCode::TlsRequired,
            ..
        }) => {}
        other => panic!("expected tls_required, got {other:?}"),
    }
    assert!(raw.recv().await.is_none());
    let e = Client::connect(ClientOptions::tcp(&b.tcp.to_string(), "plain").reconnect(false))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::TlsRequired), "{e}");

    // A client that does not trust the bus's certificate fails its handshake.
    let other = Pki::new();
    let opts = ClientOptions::tls(&b.tcp.to_string(), "untrusting", other.tls())
        .token(&token)
        .reconnect(false);
    let e = Client::connect(opts).await.expect_err("untrusted");
    assert!(e.to_string().contains("TLS"), "{e}");

    // A connection that says nothing is closed at the handshake deadline.
    let mut silent = Raw::connect(b.tcp).await;
    assert!(silent.recv().await.is_none());
    let g = b.guard_stats();
    assert_eq!(g.tls_plaintext.load(Ordering::Relaxed), 2);
    within("the failed handshakes counted", async {
        while g.tls_failed.load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_is_a_credential() {
    let pki = Pki::new();
    let token = new_token();
    let mut cfg = pki.config(&token);
    if let Some(t) = cfg.tls.as_mut() {
        t.client_certs = true;
    }
    cfg.auth.clients.push(ClientRules {
        name: "panel-7".into(),
        cert_sha256: Some(pki.client_fingerprint.clone()),
        read: vec!["boardroom/#".into()],
        ..ClientRules::default()
    });
    let b = bus(cfg).await;
    let tls = TlsClient::with_client_cert_pem(
        pki.ca_pem.as_bytes(),
        pki.client_pem.as_bytes(),
        pki.client_key.as_bytes(),
    )
    .unwrap();
    let opts = ClientOptions::tls(&b.tcp.to_string(), "panel-7", tls).reconnect(false);
    let c = Client::connect(opts)
        .await
        .expect("known certificate, no token");
    assert_eq!(c.get("boardroom/x").await.unwrap(), None);
    let e = c.get("hall/x").await.expect_err("not its room");
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    // Without a certificate or a token: no anonymous access on this bus.
    let opts = ClientOptions::tls(&b.tcp.to_string(), "nobody", pki.tls()).reconnect(false);
    let e = Client::connect(opts).await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
}

/// Runs the `avbus` binary (off the runtime's threads), bounded in time.
async fn avbus(args: Vec<String>, token: Option<&str>) -> Output {
    let token = token.map(str::to_owned);
    within(
        "the avbus command",
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.args(&args).env_remove("AVBUS_ADDR");
            match token {
                Some(t) => cmd.env("AVBUS_TOKEN", t),
                None => cmd.env_remove("AVBUS_TOKEN"),
            };
            cmd.output().expect("run avbus")
        }),
    )
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tls_args(b: &BusHandle, ca: &Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        rest[0].to_owned(),
        "--bus".into(),
        b.tcp.to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ];
    v.extend(rest[1..].iter().map(|s| s.to_string()));
    v
}

#[tokio::test]
async fn the_cli_makes_tokens_and_speaks_tls() {
    // `avbus token new` prints a token and the entry holding its hash.
    let out = avbus(
        vec!["token".into(), "new".into(), "--name".into(), "cli".into()],
        None,
    )
    .await;
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let token = stdout
        .lines()
        .find(|l| l.starts_with("avbus_"))
        .expect("a token line")
        .to_owned();
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token_hash = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a hash line")
        .to_owned();

    let pki = Pki::new();
    let mut cfg = pki.config(&new_token());
    cfg.auth.clients.push(ClientRules {
        name: "cli".into(),
        token_hash: Some(hash),
        read: vec!["lab/#".into()],
        publish: vec!["lab/#".into()],
        ..ClientRules::default()
    });
    let b = bus(cfg).await;
    let ca = pki.path("ca.pem");

    let out = avbus(
        tls_args(&b, &ca, &["pub", "lab/level", "5", "--retain"]),
        Some(&token),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = avbus(tls_args(&b, &ca, &["get", "lab/level"]), Some(&token)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "5");
    // Outside its rules: the typed refusal, exit 1.
    let out = avbus(tls_args(&b, &ca, &["get", "hall/level"]), Some(&token)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("forbidden"),
        "{}",
        text(&out.stderr)
    );
    // Without --ca (plaintext) the bus says it wants TLS; exit 2.
    let out = avbus(
        vec![
            "get".into(),
            "--bus".into(),
            b.tcp.to_string(),
            "lab/level".into(),
        ],
        Some(&token),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("tls_required"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn browsers_get_https_and_wss_with_the_same_certificate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new();
    let token = new_token();
    let b = bus(pki.config(&token)).await;
    let http = b.http.expect("HTTP listens").to_string();
    // A plaintext HTTP request on the HTTPS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(&http).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        within("the plaintext refusal", plain.read_to_end(&mut out))
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));
    }
    // wss: TLS first, then the WebSocket upgrade, then the protocol with a token.
    let stream = pki
        .tls()
        .connect(&http)
        .await
        .expect("TLS to the HTTP port");
    let mut req = format!("wss://{http}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("https://{http}").parse().unwrap());
    let (mut ws, _) = within(
        "the wss handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("WebSocket over TLS");
    let hello = ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "wss-panel".into(),
        role: Role::Panel,
        credentials: Value::Map(vec![(Value::from("token"), Value::from(token.as_str()))]),
        resume: None,
    };
    let f = avbus::protocol::frame(&hello);
    ws.send(Message::Binary(f.slice(4..))).await.unwrap();
    match within("welcome over wss", ws.next()).await {
        Some(Ok(Message::Binary(b))) => assert!(matches!(
            avbus::protocol::decode_bus(&b).unwrap(),
            BusMsg::Welcome { .. }
        )),
        other => panic!("expected welcome, got {other:?}"),
    }
}
