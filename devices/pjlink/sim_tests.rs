//! The simulated projector over real TCP (and UDP for class 2 notifications) on
//! 127.0.0.1, as a controller sees it; every wait is bounded.

use super::*;
use crate::devices::pjlink::proto::auth_digest;
use std::future::Future;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let result = tokio::time::timeout(WAIT, fut).await;
    result.unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn start(cfg: SimConfig) -> Sim {
    Sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (rd, wr) = within("connect", TcpStream::connect(addr))
            .await
            .unwrap()
            .into_split();
        Client {
            rd: BufReader::new(rd),
            wr,
        }
    }

    /// Connects and expects `PJLINK 0`.
    async fn open(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr).await;
        assert_eq!(client.line().await.as_deref(), Some("PJLINK 0"));
        client
    }

    /// The next line without its CR; `None` once the device closed (FIN or reset).
    async fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = within("a line", self.rd.read_until(b'\r', &mut line)).await;
        let complete = matches!(read, Ok(n) if n > 0) && line.pop() == Some(b'\r');
        complete.then(|| String::from_utf8(line).unwrap())
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("send", self.wr.write_all(bytes)).await.unwrap();
    }

    /// Sends `line` and CR, returns the reply.
    async fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\r").as_bytes()).await;
        self.line()
            .await
            .unwrap_or_else(|| panic!("closed after {line}"))
    }

    /// Asks each line and checks each reply.
    async fn script(&mut self, exchanges: &[(&str, &str)]) {
        for (line, expected) in exchanges {
            assert_eq!(self.ask(line).await, *expected, "reply to {line}");
        }
    }
}

async fn wait_for(sim: &Sim, what: &str, f: impl FnMut(&SimState) -> bool) {
    within(what, sim.changes().wait_for(f)).await.unwrap();
}

#[tokio::test]
async fn open_projector_answers_queries() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(sim.addr()).await;
    c.script(&[
        ("%1POWR ?", "%1POWR=0"),
        ("%1CLSS ?", "%1CLSS=1"),
        ("%1NAME ?", "%1NAME=avbus projector"),
        ("%1INF1 ?", "%1INF1=avbus"),
        ("%1INF2 ?", "%1INF2=PJ-SIM"),
        ("%1INFO ?", "%1INFO="),
        ("%1INST ?", "%1INST=11 12 31 32 33"),
        ("%1ERST ?", "%1ERST=000000"),
        ("%1LAMP ?", "%1LAMP=1200 0"),
        // These need the lamp on.
        ("%1INPT ?", "%1INPT=ERR3"),
        ("%1AVMT 31", "%1AVMT=ERR3"),
        // Undefined, out of parameter, class 2 on a class 1 model.
        ("%1ABCD ?", "%1ABCD=ERR1"),
        ("%1POWR 7", "%1POWR=ERR2"),
        ("%1ERST 1", "%1ERST=ERR2"),
        ("%2SNUM ?", "%2SNUM=ERR1"),
    ])
    .await;
    // Pipelined commands are answered in order.
    c.send(b"%1POWR ?\r%1CLSS ?\r").await;
    assert_eq!(c.line().await.as_deref(), Some("%1POWR=0"));
    assert_eq!(c.line().await.as_deref(), Some("%1CLSS=1"));
}

#[tokio::test]
async fn authentication_as_the_spec_describes() {
    let password = "JBMIAProjectorLink";
    let cfg = SimConfig {
        password: Some(password.into()),
        ..SimConfig::fast()
    };
    let sim = start(cfg).await;
    for (answer, expected) in [
        (password, "%1POWR=0"),
        ("wrong", "PJLINK ERRA"),
        ("", "PJLINK ERRA"),
    ] {
        let mut c = Client::connect(sim.addr()).await;
        let greeting = c.line().await.unwrap();
        let random = greeting.strip_prefix("PJLINK 1 ").unwrap();
        assert_eq!(random.len(), 8, "{greeting}");
        let digest = if answer.is_empty() {
            String::new()
        } else {
            auth_digest(random, answer)
        };
        assert_eq!(c.ask(&format!("{digest}%1POWR ?")).await, expected);
        if expected == "PJLINK ERRA" {
            assert_eq!(c.line().await, None, "closed after ERRA");
        } else {
            // Only the first command carries the digest.
            c.script(&[("%1CLSS ?", "%1CLSS=1")]).await;
        }
    }
}

#[tokio::test]
async fn power_warms_up_and_cools_down() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(sim.addr()).await;
    c.script(&[("%1POWR 1", "%1POWR=OK")]).await;
    wait_for(&sim, "warm-up done", |s| s.power == PowerState::On).await;
    c.script(&[
        ("%1POWR ?", "%1POWR=1"),
        ("%1POWR 1", "%1POWR=OK"),
        ("%1LAMP ?", "%1LAMP=1200 1"),
        ("%1POWR 0", "%1POWR=OK"),
    ])
    .await;
    wait_for(&sim, "cool-down done", |s| s.power == PowerState::Standby).await;
    c.script(&[("%1POWR ?", "%1POWR=0"), ("%1LAMP ?", "%1LAMP=1200 0")])
        .await;
}

#[tokio::test]
async fn err3_during_warm_up() {
    let sim = start(SimConfig {
        warmup: Duration::from_secs(3600),
        ..SimConfig::fast()
    })
    .await;
    let mut c = Client::open(sim.addr()).await;
    c.script(&[
        ("%1POWR 1", "%1POWR=OK"),
        ("%1POWR ?", "%1POWR=3"),
        ("%1INPT 31", "%1INPT=ERR3"),
        ("%1AVMT ?", "%1AVMT=ERR3"),
        ("%1POWR 0", "%1POWR=ERR3"),
    ])
    .await;
    assert_eq!(sim.panel().power_off(), Err(ErrorCode::UnavailableTime));
    assert_eq!(sim.state().power, PowerState::WarmUp);
}

#[tokio::test]
async fn inputs_and_mute() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(sim.addr()).await;
    c.script(&[("%1POWR 1", "%1POWR=OK")]).await;
    wait_for(&sim, "power on", |s| s.power == PowerState::On).await;
    c.script(&[
        ("%1INPT ?", "%1INPT=11"),
        ("%1INPT 31", "%1INPT=OK"),
        ("%1INPT ?", "%1INPT=31"),
        ("%1INPT 21", "%1INPT=ERR2"),
        ("%1INPT 3A", "%1INPT=ERR2"),
        ("%1INPT 99", "%1INPT=ERR2"),
        ("%1INPT 311", "%1INPT=ERR2"),
        ("%1AVMT ?", "%1AVMT=30"),
        ("%1AVMT 31", "%1AVMT=OK"),
        ("%1AVMT ?", "%1AVMT=31"),
        ("%1AVMT 20", "%1AVMT=OK"),
        ("%1AVMT ?", "%1AVMT=11"),
        ("%1AVMT 40", "%1AVMT=ERR2"),
    ])
    .await;
    assert_eq!(sim.state().input, InputCode::parse("31").unwrap());
}

#[tokio::test]
async fn front_panel_changes_reach_controllers() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(sim.addr()).await;
    let panel = sim.panel();
    let errors = ErrorStatus {
        lamp: ErrorLevel::Warning,
        filter: ErrorLevel::Error,
        ..Default::default()
    };
    panel.set_error(errors);
    panel.set_lamp_hours(4321);
    c.script(&[("%1ERST ?", "%1ERST=010020"), ("%1LAMP ?", "%1LAMP=4321 0")])
        .await;
    panel.set_error(ErrorStatus {
        lamp: ErrorLevel::Error,
        ..errors
    });
    c.script(&[("%1POWR 1", "%1POWR=ERR4")]).await;
    panel.set_error(ErrorStatus::default());
    assert_eq!(panel.select_input("32"), Err(ErrorCode::UnavailableTime));
    panel.power_on().unwrap();
    wait_for(&sim, "panel power on", |s| s.power == PowerState::On).await;
    panel.select_input("32").unwrap();
    assert_eq!(panel.select_input("21"), Err(ErrorCode::OutOfParameter));
    panel
        .set_mute(AvMute {
            video: true,
            audio: false,
        })
        .unwrap();
    c.script(&[
        ("%1POWR ?", "%1POWR=1"),
        ("%1INPT ?", "%1INPT=32"),
        ("%1AVMT ?", "%1AVMT=11"),
    ])
    .await;
    let laser = start(SimConfig {
        laser: true,
        ..SimConfig::fast()
    })
    .await;
    Client::open(laser.addr())
        .await
        .script(&[("%1LAMP ?", "%1LAMP=ERR1")])
        .await;
}

#[tokio::test]
async fn class_2_commands_and_udp_notifications() {
    let controller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = SimConfig {
        class: 2,
        inputs: ["31", "3A", "61"].map(String::from).to_vec(),
        notify: Some(controller.local_addr().unwrap()),
        ..SimConfig::fast()
    };
    let sim = start(cfg).await;
    let notified = || async {
        let mut datagram = [0u8; 64];
        let n = within("notification", controller.recv(&mut datagram))
            .await
            .unwrap();
        String::from_utf8(datagram[..n].to_vec()).unwrap()
    };
    assert_eq!(notified().await, "%2LKUP=02:00:5e:10:43:52\r");
    sim.panel().power_on().unwrap();
    assert_eq!(notified().await, "%2POWR=3\r");
    assert_eq!(notified().await, "%2POWR=1\r");
    sim.panel().select_input("3A").unwrap();
    assert_eq!(notified().await, "%2INPT=3A\r");
    sim.panel().set_error(ErrorStatus {
        cover: ErrorLevel::Warning,
        ..Default::default()
    });
    assert_eq!(notified().await, "%2ERST=000100\r");
    let mut c = Client::open(sim.addr()).await;
    c.script(&[
        ("%1CLSS ?", "%1CLSS=2"),
        ("%1INST ?", "%1INST=31"),
        ("%2INST ?", "%2INST=31 3A 61"),
        ("%2INPT ?", "%2INPT=3A"),
        ("%1INPT 61", "%1INPT=ERR2"),
        ("%2INPT 61", "%2INPT=OK"),
        ("%2INNM ?31", "%2INNM=DIGITAL 1"),
        ("%2INNM ?11", "%2INNM=ERR2"),
        ("%2SNUM ?", "%2SNUM=SIM0001"),
        ("%2SVER ?", "%2SVER=1.0"),
        ("%2IRES ?", "%2IRES=1920x1080"),
        ("%2FILT ?", "%2FILT=300"),
        ("%2FREZ 1", "%2FREZ=OK"),
        ("%2FREZ ?", "%2FREZ=1"),
        ("%2SVOL 1", "%2SVOL=OK"),
        ("%2SVOL 2", "%2SVOL=ERR2"),
        ("%1SNUM ?", "%1SNUM=ERR1"),
    ])
    .await;
    assert_eq!(notified().await, "%2INPT=61\r");
}

#[tokio::test]
async fn garbage_closes_the_connection_not_the_device() {
    let sim = start(SimConfig::fast()).await;
    let digest_first = b"0123456789abcdef0123456789abcdef%1POWR ?\r";
    let garbage: [&[u8]; 7] = [
        b"hello\r",
        b"%1powr ?\r",
        b"%3POWR ?\r",
        b"%1POWR=1\r",
        b"%1POWR ?\n\r",
        digest_first,
        &[b'x'; 300],
    ];
    for bytes in garbage {
        let mut c = Client::open(sim.addr()).await;
        c.send(bytes).await;
        assert_eq!(c.line().await, None, "{}", bytes.escape_ascii());
    }
    Client::open(sim.addr())
        .await
        .script(&[("%1POWR ?", "%1POWR=0")])
        .await;
}

#[tokio::test]
async fn inject_reaches_every_controller() {
    let sim = start(SimConfig::fast()).await;
    let mut a = Client::open(sim.addr()).await;
    let mut b = Client::open(sim.addr()).await;
    sim.inject(b"%1POWR=ERR4\r");
    assert_eq!(a.line().await.as_deref(), Some("%1POWR=ERR4"));
    assert_eq!(b.line().await.as_deref(), Some("%1POWR=ERR4"));
    a.script(&[("%1POWR ?", "%1POWR=0")]).await;
}

#[tokio::test]
async fn connection_limit_and_idle_timeout() {
    let idle_timeout = Some(Duration::from_millis(500));
    let sim = start(SimConfig {
        max_connections: 1,
        idle_timeout,
        ..SimConfig::fast()
    })
    .await;
    let mut first = Client::open(sim.addr()).await;
    let mut second = Client::connect(sim.addr()).await;
    assert_eq!(
        second.line().await,
        None,
        "over the limit: closed, no greeting"
    );
    assert_eq!(first.line().await, None, "idle: closed");
    wait_for(&sim, "no connections", |s| s.connections == 0).await;
    Client::open(sim.addr())
        .await
        .script(&[("%1POWR ?", "%1POWR=0")])
        .await;
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port() {
    let sim = start(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut c = Client::open(addr).await;
    within("stop", sim.stop()).await;
    assert_eq!(c.line().await, None);
    let sim = Sim::start(addr, SimConfig::fast()).await.unwrap();
    Client::open(sim.addr())
        .await
        .script(&[("%1POWR ?", "%1POWR=0")])
        .await;
}

#[tokio::test]
async fn rejects_bad_configuration() {
    let fast = SimConfig::fast;
    for cfg in [
        SimConfig { class: 3, ..fast() },
        SimConfig {
            inputs: vec!["3A".into()],
            ..fast()
        },
        SimConfig {
            inputs: vec![],
            ..fast()
        },
        SimConfig {
            name: "x".repeat(65),
            ..fast()
        },
    ] {
        let err = Sim::start("127.0.0.1:0".parse().unwrap(), cfg)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
