//! The simulator's tests, black-box over real UDP on 127.0.0.1 as the adapter will see
//! it. Motion is observed by polling the position inquiries; every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

use super::proto::*;
use super::sim::{PanelError, Sim, SimConfig};

/// The longest wait for anything the camera should do.
const WAIT: Duration = Duration::from_secs(5);
/// Silence this long counts as "no reply".
const QUIET: Duration = Duration::from_millis(150);

async fn start(cfg: SimConfig) -> Sim {
    Sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

fn control_error(seq: Seq, error: ControlError) -> Datagram {
    Datagram::control(seq, Control::Error(error))
}

/// A controller: one UDP socket numbering its messages from 1.
struct Ctl {
    sock: UdpSocket,
    cam: SocketAddr,
    seq: Seq,
}

impl Ctl {
    async fn new(cam: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Ctl {
            sock,
            cam,
            seq: Seq(0),
        }
    }

    async fn raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.cam).await.unwrap();
    }

    /// Sends with the next sequence number.
    async fn send(&mut self, kind: PayloadType, payload: Payload) -> Seq {
        self.seq = self.seq.next();
        self.raw(&Datagram::new(kind, self.seq, payload).encode())
            .await;
        self.seq
    }

    async fn recv(&self) -> Datagram {
        let mut buf = [0; 64];
        let received = timeout(WAIT, self.sock.recv_from(&mut buf)).await;
        let (n, _) = received.expect("the camera answers in time").unwrap();
        decode_datagram(&buf[..n]).unwrap()
    }

    async fn quiet(&self) -> bool {
        timeout(QUIET, self.sock.recv_from(&mut [0; 64]))
            .await
            .is_err()
    }

    /// The next datagram, which must be a VISCA reply to `seq`.
    async fn reply(&self, seq: Seq) -> Reply {
        let d = self.recv().await;
        assert_eq!((d.kind, d.seq), (PayloadType::Reply, seq));
        Reply::decode(d.payload.as_bytes()).unwrap()
    }

    async fn command(&mut self, cmd: Command) -> (Seq, Reply) {
        let seq = self.send(PayloadType::Command, cmd.encode()).await;
        (seq, self.reply(seq).await)
    }

    /// A command that must be accepted and complete.
    async fn run(&mut self, cmd: Command) {
        let (seq, ack) = self.command(cmd).await;
        let Reply::Ack(y) = ack else {
            panic!("{cmd:?} got {ack:?}")
        };
        assert_eq!(self.reply(seq).await, Reply::Completion(y), "{cmd:?}");
    }

    async fn ask(&mut self, inquiry: Inquiry) -> Answer {
        let seq = self.send(PayloadType::Inquiry, inquiry.encode()).await;
        match self.reply(seq).await {
            Reply::Data(data) => Answer::decode(inquiry, data.as_bytes()).unwrap(),
            other => panic!("{inquiry:?} got {other:?}"),
        }
    }

    /// Pan, tilt and zoom, by inquiry.
    async fn at(&mut self) -> (i16, i16, u16) {
        match (
            self.ask(Inquiry::PanTiltPosition).await,
            self.ask(Inquiry::ZoomPosition).await,
        ) {
            (Answer::PanTiltPosition(p), Answer::ZoomPosition(z)) => (p.pan, p.tilt, z),
            other => panic!("{other:?}"),
        }
    }

    /// Polls the position inquiries until `done` holds.
    async fn until(&mut self, done: impl Fn((i16, i16, u16)) -> bool) -> (i16, i16, u16) {
        let poll = async {
            loop {
                let at = self.at().await;
                if done(at) {
                    return at;
                }
            }
        };
        timeout(WAIT, poll)
            .await
            .expect("the camera gets there in time")
    }
}

#[tokio::test]
async fn power_on_is_acked_then_completed_after_the_power_on_time() {
    let power_on_time = Duration::from_millis(100);
    let sim = start(SimConfig {
        powered: false,
        power_on_time,
        ..SimConfig::fast()
    })
    .await;
    let mut ctl = Ctl::new(sim.addr()).await;
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::Off));
    let sent = Instant::now();
    let (seq, ack) = ctl.command(Command::Power(Power::On)).await;
    assert_eq!(
        (ack, sim.state().switching),
        (Reply::Ack(1), Some(Power::On))
    );
    assert_eq!(ctl.reply(seq).await, Reply::Completion(1));
    assert!(sent.elapsed() >= power_on_time);
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
}

#[tokio::test]
async fn inquiries_are_answered_directly() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
    assert_eq!(ctl.at().await, (0, 0, 0));
}

#[tokio::test]
async fn a_drive_moves_until_stopped_or_at_the_end_of_the_range() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.run(Command::Drive(
        Direction::UpRight,
        Speed { pan: 1, tilt: 1 },
    ))
    .await;
    ctl.until(|(pan, tilt, _)| pan > 0 && tilt > 0).await;
    ctl.run(Command::Drive(Direction::Stop, Speed::MAX)).await;
    assert!(!sim.state().moving);
    let stopped = ctl.at().await;
    assert_eq!(ctl.at().await, stopped);
    ctl.run(Command::Drive(Direction::DownLeft, Speed::MAX))
        .await;
    ctl.until(|at| at == (-0x2200, -0x0400, 0)).await;
    assert!(
        !sim.state().moving,
        "the motors stop at the ends of their ranges"
    );
}

#[tokio::test]
async fn zoom_drives_and_zooms_to_a_position() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.run(Command::Zoom(Zoom::Tele(Some(0)))).await;
    ctl.until(|(_, _, zoom)| zoom > 0).await;
    ctl.run(Command::Zoom(Zoom::Stop)).await;
    ctl.run(Command::ZoomTo(0x2000)).await;
    assert_eq!(ctl.at().await, (0, 0, 0x2000));
    let beyond_tele = ctl.command(Command::ZoomTo(0x4001)).await.1;
    assert_eq!(beyond_tele, Reply::Error(0, ViscaError::Syntax));
}

#[tokio::test]
async fn presets_store_and_recall_positions() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.run(Command::MoveTo(
        Position {
            pan: 1000,
            tilt: -500,
        },
        Speed::MAX,
    ))
    .await;
    ctl.run(Command::ZoomTo(3000)).await;
    ctl.run(Command::Preset(PresetAction::Set, 2)).await;
    ctl.run(Command::Home).await;
    assert_eq!(ctl.at().await, (0, 0, 3000));
    ctl.run(Command::ZoomTo(0)).await;
    ctl.run(Command::Preset(PresetAction::Recall, 2)).await;
    assert_eq!(ctl.at().await, (1000, -500, 3000));
    let no_such = ctl
        .command(Command::Preset(PresetAction::Recall, 16))
        .await
        .1;
    assert_eq!(no_such, Reply::Error(0, ViscaError::Syntax));
}

#[tokio::test]
async fn a_retransmission_is_answered_but_not_performed_again() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.run(Command::MoveTo(Position { pan: 2000, tilt: 0 }, Speed::MAX))
        .await;
    ctl.run(Command::Preset(PresetAction::Set, 1)).await;
    let store = Datagram::command(ctl.seq, &Command::Preset(PresetAction::Set, 1));
    sim.panel().press(Command::Home).unwrap();
    let home = async {
        while sim.state().pan != 0 {
            tokio::task::yield_now().await;
        }
    };
    timeout(WAIT, home).await.unwrap();
    ctl.raw(&store.encode()).await;
    assert_eq!(
        ctl.recv().await,
        control_error(store.seq, ControlError::Sequence)
    );
    assert!(ctl.quiet().await, "no ACK: the repeat is not performed");
    ctl.run(Command::Preset(PresetAction::Recall, 1)).await;
    assert_eq!(
        ctl.at().await.0,
        2000,
        "preset 1 still holds the first position"
    );
}

#[tokio::test]
async fn reset_restarts_the_sequence() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.ask(Inquiry::Power).await;
    ctl.ask(Inquiry::Power).await;
    ctl.raw(&Datagram::control(Seq(77), Control::Reset).encode())
        .await;
    assert_eq!(
        ctl.recv().await,
        Datagram::control_reply(Seq(77), ControlReply::Ack)
    );
    ctl.seq = Seq(0);
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
}

#[tokio::test]
async fn out_of_order_sequence_numbers_are_refused() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.ask(Inquiry::Power).await;
    ctl.seq = Seq(5);
    let seq = ctl
        .send(PayloadType::Command, Command::Power(Power::Off).encode())
        .await;
    assert_eq!(ctl.recv().await, control_error(seq, ControlError::Sequence));
    assert_eq!(sim.state().switching, None, "not performed");
    ctl.seq = Seq(1);
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
    let mut stranger = Ctl::new(sim.addr()).await;
    stranger.seq = Seq(40);
    let seq = stranger
        .send(PayloadType::Inquiry, Inquiry::Power.encode())
        .await;
    assert_eq!(
        stranger.recv().await,
        control_error(seq, ControlError::Sequence)
    );
}

#[tokio::test]
async fn malformed_messages_get_syntax_or_message_type_errors() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    let bad = Payload::new(&[0x81, 0x01, 0x04, 0x00, 0x05, 0xFF]).unwrap();
    let seq = ctl.send(PayloadType::Command, bad).await;
    assert_eq!(ctl.reply(seq).await, Reply::Error(0, ViscaError::Syntax));
    // An error does not use the number up: the corrected message may reuse it.
    ctl.raw(&Datagram::command(seq, &Command::Home).encode())
        .await;
    assert_eq!(ctl.reply(seq).await, Reply::Ack(1));
    assert_eq!(ctl.reply(seq).await, Reply::Completion(1));
    let seq = ctl
        .send(PayloadType::Command, Inquiry::Power.encode())
        .await;
    assert_eq!(
        ctl.recv().await,
        control_error(seq, ControlError::MessageType)
    );
    ctl.raw(&[0x03, 0x00, 0x00, 0x01, 0, 0, 0, 9, 0x01]).await;
    assert_eq!(
        ctl.recv().await,
        control_error(Seq(9), ControlError::MessageType)
    );
    ctl.raw(&Datagram::reply(Seq(3), &Reply::Ack(1)).encode())
        .await;
    assert_eq!(
        ctl.recv().await,
        control_error(Seq(3), ControlError::MessageType)
    );
}

#[tokio::test]
async fn a_camera_in_standby_or_switching_refuses_commands() {
    let power_on_time = Duration::from_millis(300);
    let sim = start(SimConfig {
        power_on_time,
        ..SimConfig::fast()
    })
    .await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.run(Command::Power(Power::Off)).await;
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::Off));
    let drive = Command::Drive(Direction::Up, Speed::MAX);
    assert_eq!(
        ctl.command(drive).await.1,
        Reply::Error(1, ViscaError::NotExecutable)
    );
    assert_eq!(sim.panel().press(drive), Err(PanelError::NotExecutable));
    let (on, ack) = ctl.command(Command::Power(Power::On)).await;
    assert_eq!(ack, Reply::Ack(1));
    let home = ctl.command(Command::Home).await.1;
    assert_eq!(
        home,
        Reply::Error(2, ViscaError::NotExecutable),
        "still switching"
    );
    assert_eq!(ctl.reply(on).await, Reply::Completion(1));
    ctl.run(drive).await;
}

#[tokio::test]
async fn drop_every_loses_datagrams_that_a_retransmission_recovers() {
    let sim = start(SimConfig {
        drop_every: Some(2),
        ..SimConfig::fast()
    })
    .await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.ask(Inquiry::Power).await;
    let seq = ctl.send(PayloadType::Command, Command::Home.encode()).await;
    assert!(ctl.quiet().await, "the second datagram is lost");
    ctl.raw(&Datagram::command(seq, &Command::Home).encode())
        .await;
    assert_eq!(ctl.reply(seq).await, Reply::Ack(1));
    assert_eq!(ctl.reply(seq).await, Reply::Completion(1));
    let state = sim.state();
    assert_eq!((state.received, state.dropped), (3, 1));
}

#[tokio::test]
async fn garbage_is_dropped_and_counted() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    ctl.raw(&[1, 2, 3]).await;
    ctl.raw(&[0x01, 0x00, 0x00, 0x09, 0, 0, 0, 1, 0x81, 0xFF])
        .await;
    ctl.raw(&[0xFF; 100]).await;
    assert!(ctl.quiet().await);
    assert_eq!(sim.state().ignored, 3);
    assert_eq!(
        ctl.ask(Inquiry::Power).await,
        Answer::Power(Power::On),
        "sequence untouched"
    );
}

#[tokio::test]
async fn two_sockets_then_buffer_full_and_cancel() {
    let slow = SimConfig {
        pan_speed: 100.0,
        zoom_speed: 100.0,
        ..SimConfig::fast()
    };
    let sim = start(slow).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    let far = Command::MoveTo(Position { pan: 8000, tilt: 0 }, Speed::MAX);
    assert_eq!(ctl.command(far).await.1, Reply::Ack(1));
    let (zoom_to, ack) = ctl.command(Command::ZoomTo(0x4000)).await;
    assert_eq!(ack, Reply::Ack(2));
    let full = ctl.command(Command::Home).await.1;
    assert_eq!(full, Reply::Error(0, ViscaError::BufferFull));
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
    let cancel = Command::Cancel(1);
    assert_eq!(
        ctl.command(cancel).await.1,
        Reply::Error(1, ViscaError::Cancelled)
    );
    assert_eq!(
        ctl.command(cancel).await.1,
        Reply::Error(1, ViscaError::NoSocket)
    );
    ctl.run(Command::Zoom(Zoom::Stop)).await;
    assert_eq!(
        ctl.reply(zoom_to).await,
        Reply::Completion(2),
        "taken over, so complete"
    );
    assert_eq!(sim.state().busy_sockets, 0);
}

#[tokio::test]
async fn the_panel_moves_the_camera_and_inquiries_see_it() {
    let sim = start(SimConfig::fast()).await;
    let mut ctl = Ctl::new(sim.addr()).await;
    let panel = sim.panel();
    panel
        .press(Command::Drive(Direction::Right, Speed { pan: 2, tilt: 1 }))
        .unwrap();
    ctl.until(|(pan, _, _)| pan > 100).await;
    panel
        .press(Command::Drive(Direction::Stop, Speed::MAX))
        .unwrap();
    let stopped = ctl.at().await;
    ctl.run(Command::Preset(PresetAction::Set, 3)).await;
    panel.press(Command::Home).unwrap();
    ctl.until(|(pan, _, _)| pan == 0).await;
    panel.recall(3).unwrap();
    ctl.until(|at| at == stopped).await;
    assert_eq!(panel.recall(16), Err(PanelError::Invalid));
}

#[tokio::test]
async fn inject_sends_raw_bytes_to_a_controller() {
    let sim = start(SimConfig::fast()).await;
    let ctl = Ctl::new(sim.addr()).await;
    let unasked = Datagram::reply(Seq(5), &Reply::Completion(2));
    let to = ctl.sock.local_addr().unwrap();
    sim.inject(to, &unasked.encode()).await.unwrap();
    assert_eq!(ctl.recv().await, unasked);
}

#[tokio::test]
async fn stop_closes_the_socket_and_a_restart_serves_again() {
    let sim = start(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut ctl = Ctl::new(addr).await;
    ctl.ask(Inquiry::Power).await;
    timeout(WAIT, sim.stop()).await.expect("the task ends");
    ctl.send(PayloadType::Inquiry, Inquiry::Power.encode())
        .await;
    assert!(ctl.quiet().await);
    let _sim = Sim::start(addr, SimConfig::fast())
        .await
        .expect("the port is free again");
    ctl.seq = Seq(0); // a restarted camera knows no controller
    assert_eq!(ctl.ask(Inquiry::Power).await, Answer::Power(Power::On));
}
