//! The HTTP/WebSocket gateway over real sockets, without a browser: the protocol over
//! WebSocket (one binary message per frame), the Origin check, refusals of what the
//! protocol does not allow, a dropped WebSocket resuming its session, and the
//! embedded files.

use std::io::{Read, Write};

use avbus::bus::BusHandle;
use avbus::protocol::{
    decode_bus, frame, BusMsg, ClientMsg, ErrorCode, Resume, Role, LEN_PREFIX, PROTOCOL_VERSION,
};
use avbus::value::Value;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{self, bus, config, lab_adapter, within};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` with the given `Origin` header (none: as a non-browser client).
async fn open(bus: &BusHandle, origin: Option<&str>) -> Result<Ws, WsError> {
    let http = bus.http.expect("HTTP listens");
    let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map(|(ws, _)| ws)
}

fn own_origin(bus: &BusHandle) -> String {
    format!("http://{}", bus.http.unwrap())
}

async fn send(ws: &mut Ws, msg: &ClientMsg) {
    let f = frame(msg);
    ws.send(Message::Binary(f.slice(LEN_PREFIX..)))
        .await
        .unwrap();
}

/// The next protocol message, or `None` once the bus closed the WebSocket.
async fn recv(ws: &mut Ws) -> Option<BusMsg> {
    loop {
        match within("a WebSocket message", ws.next()).await {
            Some(Ok(Message::Binary(b))) => return Some(decode_bus(&b).expect("a bus frame")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn recv_until(ws: &mut Ws, mut pred: impl FnMut(&BusMsg) -> bool) -> BusMsg {
    loop {
        let m = recv(ws).await.expect("the WebSocket stays open");
        if pred(&m) {
            return m;
        }
    }
}

fn hello(resume: Option<Resume>) -> ClientMsg {
    ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "ws-test".into(),
        role: Role::Panel,
        credentials: Value::Nil,
        resume,
    }
}

async fn welcome(ws: &mut Ws, resume: Option<Resume>) -> (BusMsg, Option<Resume>) {
    send(ws, &hello(resume)).await;
    match recv(ws).await {
        Some(
            w @ BusMsg::Welcome {
                session,
                epoch,
                seq,
                ..
            },
        ) => {
            let r = Resume {
                session,
                epoch,
                last_seq: seq,
            };
            (w, Some(r))
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panel_speaks_the_protocol_over_a_websocket() {
    let bus = bus(config()).await;
    let (_adapter, mut seen) = lab_adapter(&bus).await;
    let mut ws = open(&bus, Some(&own_origin(&bus))).await.unwrap();
    let (w, _) = welcome(&mut ws, None).await;
    assert!(matches!(w, BusMsg::Welcome { resumed: false, .. }));

    send(
        &mut ws,
        &ClientMsg::Sub {
            id: 1,
            filters: vec!["lab/dev/power".into()],
        },
    )
    .await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(BusMsg::Snapshot { id: 1, .. })
    ));
    recv_until(&mut ws, |m| matches!(m, BusMsg::Synced { id: 1, .. })).await;
    send(
        &mut ws,
        &ClientMsg::Set {
            id: 2,
            topic: "lab/dev/power".into(),
            value: Value::Boolean(true),
            timeout_ms: None,
        },
    )
    .await;
    let answer = recv_until(&mut ws, |m| matches!(m, BusMsg::Ok { id: 2, .. })).await;
    assert!(matches!(answer, BusMsg::Ok { .. }));
    assert_eq!(
        within("the command", seen.recv()).await.unwrap().value,
        Value::Boolean(true)
    );
    send(&mut ws, &ClientMsg::Ping { n: 9 }).await;
    recv_until(&mut ws, |m| matches!(m, BusMsg::Pong { n: 9 })).await;
    assert_eq!(bus.web().unwrap().stats().open, 1);
    bus.shutdown().await;
}

#[tokio::test]
async fn upgrades_from_foreign_pages_are_refused() {
    let mut cfg = config();
    cfg.listen.allowed_origins = vec!["https://panels.example.com".into()];
    let bus = bus(cfg).await;
    match open(&bus, Some("https://evil.example")).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    match open(&bus, Some("null")).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    assert_eq!(bus.web().unwrap().stats().refused_origin, 2);
    // The bus's own page, an allowed origin, and a client that is not a browser.
    for origin in [
        Some(own_origin(&bus)),
        Some("https://panels.example.com".to_owned()),
        None,
    ] {
        let mut ws = open(&bus, origin.as_deref()).await.unwrap();
        welcome(&mut ws, None).await;
    }
    bus.shutdown().await;
}

#[tokio::test]
async fn text_and_oversized_messages_get_a_typed_error_and_a_close() {
    let mut cfg = config();
    cfg.limits.max_frame_bytes = 1024;
    let bus = bus(cfg).await;

    let mut ws = open(&bus, None).await.unwrap();
    welcome(&mut ws, None).await;
    ws.send(Message::Text("{\"t\":\"ping\"}".into()))
        .await
        .unwrap();
    let m = recv_until(&mut ws, |m| matches!(m, BusMsg::Error { .. })).await;
    assert!(
        matches!(
            m,
            BusMsg::Error {
                id: None,
                code: ErrorCode::BadFrame,
                ..
            }
        ),
        "{m:?}"
    );
    assert!(recv(&mut ws).await.is_none(), "closed after the error");

    let mut ws = open(&bus, None).await.unwrap();
    welcome(&mut ws, None).await;
    let _ = ws.send(Message::Binary(vec![0x80; 1025].into())).await;
    let m = recv_until(&mut ws, |m| matches!(m, BusMsg::Error { .. })).await;
    assert!(
        matches!(
            m,
            BusMsg::Error {
                code: ErrorCode::FrameTooLarge,
                ..
            }
        ),
        "{m:?}"
    );
    assert!(recv(&mut ws).await.is_none(), "closed after the error");

    // A bad binary frame is refused by the connection code itself, as over TCP.
    let mut ws = open(&bus, None).await.unwrap();
    welcome(&mut ws, None).await;
    ws.send(Message::Binary(vec![0xc1].into())).await.unwrap();
    let m = recv_until(&mut ws, |m| matches!(m, BusMsg::Error { .. })).await;
    assert!(
        matches!(
            m,
            BusMsg::Error {
                code: ErrorCode::BadFrame,
                ..
            }
        ),
        "{m:?}"
    );
    assert!(recv(&mut ws).await.is_none(), "closed after the error");
    bus.shutdown().await;
}

#[tokio::test]
async fn a_dropped_websocket_resumes_its_session_and_gets_what_it_missed() {
    let bus = bus(config()).await;
    let publisher = common::client(&bus, "publisher", Role::Tool).await;
    let mut ws = open(&bus, None).await.unwrap();
    let (_, resume) = welcome(&mut ws, None).await;
    let mut resume = resume.unwrap();
    send(
        &mut ws,
        &ClientMsg::Sub {
            id: 1,
            filters: vec!["room/#".into()],
        },
    )
    .await;
    if let BusMsg::Synced { seq, .. } =
        recv_until(&mut ws, |m| matches!(m, BusMsg::Synced { id: 1, .. })).await
    {
        resume.last_seq = seq;
    }

    let web = bus.web().unwrap();
    web.set_accepting(false);
    assert_eq!(web.drop_all(), 1);
    assert!(recv(&mut ws).await.is_none(), "the WebSocket was cut");
    // Held off while the gateway is not accepting.
    match open(&bus, None).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE),
        other => panic!("expected 503, got {other:?}"),
    }
    publisher
        .publish("room/level", Value::from(7), true)
        .await
        .unwrap();
    web.set_accepting(true);

    let mut ws = open(&bus, None).await.unwrap();
    let (w, _) = welcome(&mut ws, Some(resume)).await;
    assert!(matches!(w, BusMsg::Welcome { resumed: true, .. }), "{w:?}");
    assert!(matches!(
        recv(&mut ws).await,
        Some(BusMsg::Snapshot {
            id: 0,
            resync: false,
            ..
        })
    ));
    match recv(&mut ws).await {
        Some(BusMsg::Update(u)) => {
            assert_eq!(u.topic, "room/level");
            assert_eq!(u.value, Value::from(7));
            assert!(u.seq > resume.last_seq);
        }
        other => panic!("expected the missed update, got {other:?}"),
    }
    assert!(matches!(
        recv(&mut ws).await,
        Some(BusMsg::Synced { id: 0, .. })
    ));
    bus.shutdown().await;
}

/// A plain HTTP/1.1 request over a real socket; the whole response as text.
fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::LIMIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_and_client_files_are_served() {
    let bus = bus(config()).await;
    let addr = bus.http.unwrap();
    let [page, js, css, missing, post] = tokio::task::spawn_blocking(move || {
        [
            ("GET", "/"),
            ("GET", "/avbus.js"),
            ("GET", "/panel.css"),
            ("GET", "/nothing"),
            ("POST", "/"),
        ]
        .map(|(m, p)| http(addr, m, p))
    })
    .await
    .unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{page}");
    assert!(lower.contains("content-security-policy: default-src 'self'"));
    assert!(page.contains("<script type=\"module\" src=\"/panel.js\">"));
    assert!(js
        .to_ascii_lowercase()
        .contains("content-type: text/javascript"));
    assert!(js.contains("export class Client"));
    assert!(css.to_ascii_lowercase().contains("content-type: text/css"));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    bus.shutdown().await;
}

#[tokio::test]
async fn telemetry_reaches_a_websocket_as_datagram_messages_at_its_rate() {
    use avbus::client::{Client, ClientOptions};
    use avbus::model::{ControlKind, ControlSpec, DeviceDescriptor};
    let bus = bus(config()).await;
    let adapter = Client::connect(ClientOptions::local(bus.local(), "meters").role(Role::Adapter))
        .await
        .unwrap();
    let device = DeviceDescriptor {
        room: "hall".into(),
        name: "mix".into(),
        label: "Mixer".into(),
        class: "console".into(),
        driver: "test".into(),
        controls: vec![ControlSpec::new(
            "level",
            ControlKind::Meter {
                min: 0.0,
                max: 1.0,
                unit: String::new(),
                channels: 1,
                rate_hz: 50.0,
            },
        )],
    };
    adapter.declare(device, true).await.unwrap();
    let mut ws = open(&bus, Some(&own_origin(&bus))).await.unwrap();
    welcome(&mut ws, None).await;
    send(
        &mut ws,
        &ClientMsg::Tsub {
            id: 7,
            filter: "hall/#".into(),
            hz: 10.0,
        },
    )
    .await;
    let alias = match recv_until(&mut ws, |m| matches!(m, BusMsg::Ok { id: 7, .. })).await {
        BusMsg::Ok { result, .. } => {
            let streams = avbus::value::get(&result, "streams").cloned().unwrap();
            let list: Vec<avbus::protocol::StreamDesc> =
                avbus::value::from_value(&streams).unwrap();
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].topic, "hall/mix/level");
            list[0].alias
        }
        _ => unreachable!(),
    };
    // 100 values as fast as they go; the browser gets the newest at most 10 a second,
    // as datagram bytes in binary messages whose first byte is not a map.
    for i in 1..=100 {
        adapter.publish_telemetry(vec![("hall/mix/level".into(), Value::F32(i as f32))]);
    }
    let mut values = Vec::new();
    let mut dseqs = Vec::new();
    within("the newest value over the WebSocket", async {
        loop {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("WebSocket closed")
            };
            if b[0] != 0xA7 {
                continue; // a control frame
            }
            let (h, body) = avbus::telemetry::decode_header(&b).unwrap();
            assert_eq!(h.kind, avbus::telemetry::Kind::Data);
            dseqs.push(h.dseq);
            for r in avbus::telemetry::records(body) {
                let r = r.unwrap();
                assert_eq!(r.alias, alias);
                values.push(r.f32s().next().unwrap());
            }
            if values.last() == Some(&100.0) {
                return;
            }
        }
    })
    .await;
    // Conflated: far fewer than the 100 published, in order, no datagram lost.
    assert!(values.len() < 50, "{values:?}");
    assert!(values.windows(2).all(|w| w[0] < w[1]));
    assert!(dseqs.windows(2).all(|w| w[1] == w[0] + 1));
    adapter.close().await;
}

#[tokio::test]
async fn websockets_get_the_same_credentials_and_rules_as_tcp() {
    use avbus::auth::{hash_token, new_token};
    use avbus::config::ClientRules;
    let panel_token = new_token();
    let mut cfg = config();
    cfg.auth.clients = vec![ClientRules {
        name: "boardroom-panel".into(),
        token_hash: Some(hash_token(&panel_token)),
        read: vec!["boardroom/#".into()],
        command: vec!["boardroom/#".into()],
        ..ClientRules::default()
    }];
    let bus = bus(cfg).await;
    let hello_with = |token: Option<&str>| ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "ws-panel".into(),
        role: Role::Panel,
        credentials: match token {
            Some(t) => Value::Map(vec![(Value::from("token"), Value::from(t))]),
            None => Value::Nil,
        },
        resume: None,
    };
    // The boardroom credential: welcome, but the hall is forbidden.
    let mut ws = open(&bus, Some(&own_origin(&bus))).await.unwrap();
    send(&mut ws, &hello_with(Some(&panel_token))).await;
    let first = recv(&mut ws).await;
    assert!(matches!(first, Some(BusMsg::Welcome { .. })), "{first:?}");
    send(
        &mut ws,
        &ClientMsg::Set {
            id: 1,
            topic: "hall/dsp/gain".into(),
            value: Value::from(1),
            timeout_ms: None,
        },
    )
    .await;
    match recv_until(&mut ws, |m| matches!(m, BusMsg::Error { id: Some(1), .. })).await {
        BusMsg::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        _ => unreachable!(),
    }
    // No credentials, then a wrong token: refused with `unauthorized`, then closed.
    for token in [None, Some("avbus_0000")] {
        let mut ws = open(&bus, Some(&own_origin(&bus))).await.unwrap();
        send(&mut ws, &hello_with(token)).await;
        match recv(&mut ws).await {
            Some(BusMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::Unauthorized),
            other => panic!("expected unauthorized, got {other:?}"),
        }
        assert!(recv(&mut ws).await.is_none(), "closed after the refusal");
    }
    // And a foreign page is still refused before any of this.
    assert!(open(&bus, Some("http://evil.example")).await.is_err());
}
