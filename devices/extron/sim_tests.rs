//! The simulator over real TCP on 127.0.0.1, as a controller sees it; every wait is
//! bounded.

use super::*;
use proto::ClientCodec;
use tokio_util::codec::Decoder;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(5);

async fn start(cfg: SimConfig) -> Sim {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Sim::start(listen, cfg).await.expect("sim starts")
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = timeout(WAIT, TcpStream::connect(addr)).await;
        Self {
            stream: stream.expect("connect in time").expect("connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connected and past the banner (and the prompt, with a password).
    async fn ready(sim: &Sim) -> Self {
        let mut client = Self::connect(sim.addr()).await;
        let mut greeting = format!("{}\r\n", sim.shared.cfg.banner);
        if sim.shared.cfg.password.is_some() {
            greeting.push_str("\r\nPassword:");
        }
        client.script(&[(b"", greeting.as_bytes())]).await;
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        let sent = timeout(WAIT, self.stream.write_all(bytes)).await;
        sent.expect("send in time").expect("send");
    }

    async fn fill(&mut self) {
        let read = timeout(WAIT, self.stream.read_buf(&mut self.buf)).await;
        assert!(read.expect("data in time").expect("read") > 0, "closed");
    }

    /// Sends each command (none if empty) and expects exactly these bytes back.
    async fn script(&mut self, steps: &[(&[u8], &[u8])]) {
        for (command, reply) in steps {
            if !command.is_empty() {
                self.send(command).await;
            }
            while self.buf.len() < reply.len() {
                self.fill().await;
            }
            let got = self.buf.split_to(reply.len());
            assert_eq!(
                got.escape_ascii().to_string(),
                reply.escape_ascii().to_string()
            );
        }
    }

    async fn closed(&mut self) {
        let eof = timeout(WAIT, async {
            while let Ok(1..) = self.stream.read_buf(&mut self.buf).await {
                self.buf.clear();
            }
        });
        eof.await.expect("closed in time");
    }
}

#[tokio::test]
async fn banner_then_ties_with_breakaway_tie_all_quick_tie_and_clear_all() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::ready(&sim).await;
    c.script(&[
        (b"1*3!", b"Out03 In01 All\r\n"),
        (b"2*3%", b"Out03 In02 Vid\r\n"),
        (b"4*3$", b"Out03 In04 Aud\r\n"),
        (b"5*4&", b"Out04 In05 RGB\r\n"),
        (b"3%", b"02\r\n"),
        (b"3&", b"02\r\n"),
        (b"3$", b"04\r\n"),
        (b"8$", b"00\r\n"),
        (b"0*3$", b"Out03 In00 Aud\r\n"),
        (
            b"1*1!02*02&003*003%\r\n4*8$",
            b"Out01 In01 All\r\nOut02 In02 RGB\r\nOut03 In03 Vid\r\nOut08 In04 Aud\r\n",
        ),
    ])
    .await;
    let state = sim.state();
    assert_eq!(state.video, [1, 2, 3, 5, 0, 0, 0, 0]);
    assert_eq!(state.audio, [1, 0, 0, 0, 0, 0, 0, 4]);
    c.script(&[
        (b"5*!", b"In05 All\r\n"),
        (b"2*$", b"In02 Aud\r\n"),
        (b"\x1B+Q3*4!3*5%3*6$\r", b"Qik\r\n"),
        // All or nothing: input 9 does not exist, so 1*2! is not made either.
        (b"\x1B+Q1*2!9*3!\r", b"E01\r\n"),
    ])
    .await;
    let state = sim.state();
    assert_eq!(state.video, [5, 5, 5, 3, 3, 5, 5, 5]);
    assert_eq!(state.audio, [2, 2, 2, 3, 2, 3, 2, 2]);
    c.script(&[(b"0*!", b"In00 All\r\n")]).await;
    assert_eq!(
        (sim.state().video, sim.state().audio),
        (vec![0; 8], vec![0; 8])
    );
}

#[tokio::test]
async fn errors_mutes_and_verbose_modes_tagging_query_answers() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::ready(&sim).await;
    c.script(&[
        (b"9*1!", b"E01\r\n"),
        (b"9*!", b"E01\r\n"),
        (b"1*9!", b"E12\r\n"),
        (b"1*0!", b"E12\r\n"),
        (b"9%", b"E12\r\n"),
        (b"9*1B", b"E12\r\n"),
        (b"x", b"E10\r\n"),
        (b"3!", b"E10\r\n"),
        (b"\x1B+Q\r", b"E10\r\n"),
        (b"1*5B", b"E13\r\n"),
        (b"\x1B7CV\r", b"E13\r\n"),
        (b"I", b"V8X8 A8X8\r\n"),
        (b"Q", b"1.23\r\n"),
        (b"3*1B", b"Vmt03*1\r\n"),
        (b"3b", b"1\r\n"),
        (b"4*1Z", b"Amt04*1\r\n"),
        (b"3*1z", b"Amt03*1\r\n"),
        (b"4Z", b"1\r\n"),
        (b"\x1BVM\r", b"00320000\r\n"),
        (b"2*3!", b"Out03 In02 All\r\n"),
        (b"\x1BCV\r", b"0\r\n"),
        (b"3%", b"02\r\n"),
        (b"\x1B3CV\r", b"Vrb3\r\n"),
        (b"3%", b"Out03 In02 Vid\r\n"),
        (b"3$", b"Out03 In02 Aud\r\n"),
        (b"3B", b"Vmt03*1\r\n"),
        (b"\x1BVM\r", b"Mut00320000\r\n"),
        (b"\x1BCV\r", b"Vrb3\r\n"),
        (b"1*B", b"Vmt1\r\n"),
        (b"0*Z", b"Amt0\r\n"),
        (b"\x1B1cv\n", b"Vrb1\r\n"),
        (b"\x1BVM\r", b"11111111\r\n"),
        (b"\x1BCV\r", b"1\r\n"),
    ])
    .await;
    assert_eq!(sim.state().video_mute, [true; 8]);
}

#[tokio::test]
async fn change_notices_reach_verbose_modes_1_and_3_only() {
    let sim = start(SimConfig::fast()).await;
    let (mut quiet, mut three, mut one) = (
        Client::ready(&sim).await,
        Client::ready(&sim).await,
        Client::ready(&sim).await,
    );
    three.script(&[(b"\x1B3CV\r", b"Vrb3\r\n")]).await;
    one.script(&[(b"\x1B1CV\r", b"Vrb1\r\n")]).await;
    let panel = sim.panel();
    panel.tie(2, 4, TieKind::All).expect("in range");
    panel.mute(Plane::Video, 4, true).expect("in range");
    panel
        .mute(Plane::Video, 4, true)
        .expect("no toggle, no notice");
    assert_eq!(panel.tie(9, 1, TieKind::All), Err(SisError::InvalidInput));
    for c in [&mut three, &mut one] {
        c.script(&[(b"", b"Qik\r\nVmt04 1\r\n")]).await;
    }
    // Mode 0 got nothing: its next bytes are its own reply. Its change reaches the
    // verbose connections as its response...
    quiet.script(&[(b"1*1!", b"Out01 In01 All\r\n")]).await;
    for c in [&mut three, &mut one] {
        c.script(&[(b"", b"Out01 In01 All\r\n")]).await;
    }
    // ... but never its own sender.
    three
        .script(&[(b"3*1Z", b"Amt03*1\r\n"), (b"Q", b"1.23\r\n")])
        .await;
    one.script(&[(b"", b"Amt03*1\r\n")]).await;
    quiet.script(&[(b"Q", b"1.23\r\n")]).await;
    assert_eq!(sim.state().video[3], 2);
    assert_eq!(sim.lagged_notices(), 0);
}

#[tokio::test]
async fn password_prompts_again_until_it_is_right_and_inject_reaches_all() {
    let cfg = SimConfig {
        password: Some("secret".into()),
        user_password: Some("guest".into()),
        ..SimConfig::fast()
    };
    let sim = start(cfg).await;
    let (mut admin, mut user) = (Client::ready(&sim).await, Client::ready(&sim).await);
    admin
        .script(&[
            (b"wrong\r\n", b"\r\nPassword:"),
            (b"2*2!\r", b"\r\nPassword:"),
            (b"secret\r\n", b"\r\nLogin Administrator\r\n"),
            (b"1*1!", b"Out01 In01 All\r\n"),
        ])
        .await;
    assert_eq!(sim.state().video[..2], [1, 0]);
    // Raw bytes reach every connection, logged in or not.
    sim.inject(&b"E22\r\n"[..]);
    admin.script(&[(b"", b"E22\r\n")]).await;
    // A password and a command in one write.
    let login = b"E22\r\n\r\nLogin User\r\n1.23\r\n";
    user.script(&[(b"guest\rQ", login)]).await;
}

#[tokio::test]
async fn one_connection_too_many_gets_e26() {
    let sim = start(SimConfig {
        max_connections: 2,
        ..SimConfig::fast()
    })
    .await;
    let mut first = Client::ready(&sim).await;
    let _second = Client::ready(&sim).await;
    let mut third = Client::connect(sim.addr()).await;
    third.script(&[(b"", b"E26\r\n")]).await;
    third.closed().await;
    first.script(&[(b"Q", b"1.23\r\n")]).await;
    assert_eq!(sim.connections(), 2);
}

#[tokio::test]
async fn garbage_gets_errors_and_the_device_carries_on() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::ready(&sim).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut garbage: Vec<u8> = (0..20_000)
        .map(|_| rng.u8(..))
        .filter(|b| !b.eq_ignore_ascii_case(&b'Q'))
        .collect();
    // An escape sequence that never ends, then the keepalive.
    garbage.push(proto::ESC);
    garbage.resize(garbage.len() + 5_000, b'A');
    garbage.extend_from_slice(b"\rQ");
    let (mut rd, mut wr) = c.stream.split();
    let write = async { wr.write_all(&garbage).await.expect("send garbage") };
    // Read while writing: the replies could otherwise fill both socket buffers.
    let read = async {
        loop {
            match ClientCodec.decode(&mut c.buf).expect("a line") {
                Some(Response::Value(v)) if v == "1.23" => break,
                Some(_) => {}
                None => assert!(rd.read_buf(&mut c.buf).await.expect("read") > 0),
            }
        }
    };
    timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the device answers Q after the garbage");
    c.script(&[(b"1*1!", b"Out01 In01 All\r\n")]).await;
    assert_eq!(sim.connections(), 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let sim = start(SimConfig {
        idle_timeout: Duration::from_millis(200),
        ..SimConfig::fast()
    })
    .await;
    let mut c = Client::ready(&sim).await;
    c.closed().await;
}

#[tokio::test]
async fn stop_closes_everything_and_a_restart_comes_back_on_the_same_port() {
    let sim = start(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut c = Client::ready(&sim).await;
    sim.stop().await;
    c.closed().await;
    let refused = timeout(WAIT, TcpStream::connect(addr)).await;
    assert!(refused.expect("refused in time").is_err());
    let sim = Sim::start(addr, SimConfig::fast()).await.expect("restart");
    let mut c = Client::ready(&sim).await;
    c.script(&[(b"Q", b"1.23\r\n")]).await;
    sim.stop().await;
}
