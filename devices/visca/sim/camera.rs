//! The simulated camera itself, without the socket: sequence numbers per controller,
//! the two command sockets, motion, power switching, presets and the replies due, as
//! the module documentation of [`super`] describes. The socket task drives it with the
//! datagrams it receives and the clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

use super::{SimConfig, SimState, SOCKETS};
use crate::devices::visca::proto::{
    self, Answer, Command, Control, ControlError, ControlReply, Datagram, Inquiry, PayloadType,
    Position, Power, PresetAction, Reply, Seq, ViscaError, Zoom, MAX_PAN_SPEED, MAX_TILT_SPEED,
    MAX_ZOOM_SPEED,
};

/// Controllers whose sequence numbers are remembered. Past this the least recently heard
/// is forgotten and must start again (0 or 1, or `RESET`), as after a camera reboot.
const MAX_PEERS: usize = 64;
/// Replies waiting for their send time ([`SimConfig::ack_delay`], completions). Past
/// this a reply is dropped with a warning: to the controller it is one more lost datagram.
const MAX_OUTBOX: usize = 1024;

/// Within this many units of its target an axis has arrived (absorbs float rounding).
const ARRIVED: f64 = 1e-6;
/// Added to a computed arrival time so the axis has surely arrived when the task wakes.
const SLACK: Duration = Duration::from_micros(200);
/// Pan degrees per second at speed bytes 01..=18 (SRG-300SE table); a speed byte runs at
/// its entry divided by the last one, times [`SimConfig::pan_speed`].
const PAN_DEG_S: [f64; 24] = [
    1.1, 1.3, 1.6, 2.2, 2.9, 6.7, 11., 23., 24., 27., 41., 43., 47., 49., 54., 57., 62., 64., 69.,
    72., 80., 84., 91., 101.,
];
/// Tilt degrees per second at speed bytes 01..=17.
const TILT_DEG_S: [f64; 23] = [
    1.1, 1.3, 1.6, 2.2, 2.9, 6.7, 11., 16., 26., 29., 31., 34., 50., 52., 54., 57., 62., 64., 69.,
    72., 80., 84., 91.,
];

/// `now + delay`, or a year on if a configured delay is too large to add.
fn later(now: Instant, delay: Duration) -> Instant {
    let year = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(delay).unwrap_or(now + year)
}

/// One motor, in VISCA units: still, at a velocity, or heading for a target.
#[derive(Debug, Clone, Copy, Default)]
struct Axis {
    pos: f64,
    lo: f64,
    hi: f64,
    vel: f64,
    /// Target and speed (units per second, positive).
    target: Option<(f64, f64)>,
    /// The socket whose command the target serves.
    owner: Option<usize>,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Self {
        let axis = Axis {
            lo,
            hi,
            ..Axis::default()
        };
        Axis {
            pos: axis.clamp(0.0),
            ..axis
        }
    }

    fn clamp(&self, v: f64) -> f64 {
        v.max(self.lo).min(self.hi)
    }

    fn advance(&mut self, dt: f64) {
        match self.target {
            Some((to, speed)) if (to - self.pos).abs() > speed * dt + ARRIVED => {
                self.pos += (speed * dt).copysign(to - self.pos);
            }
            Some((to, _)) => self.aim(to, 0.0, None),
            None => {
                let next = self.pos + self.vel * dt;
                self.pos = self.clamp(next);
                if self.pos != next {
                    self.vel = 0.0;
                }
            }
        }
    }

    fn drive(&mut self, vel: f64) {
        (self.vel, self.target, self.owner) = (vel, None, None);
    }

    /// Heads for `to` (clamped); a zero, negative or NaN speed arrives at once.
    fn aim(&mut self, to: f64, speed: f64, owner: Option<usize>) {
        let to = self.clamp(to);
        let moving = speed > 0.0 && (to - self.pos).abs() > ARRIVED;
        (self.vel, self.target, self.owner) = (0.0, None, None);
        match moving {
            true => (self.target, self.owner) = (Some((to, speed)), owner),
            false => self.pos = to,
        }
    }

    /// Seconds to the target.
    fn eta(&self) -> Option<f64> {
        self.target.map(|(to, speed)| (to - self.pos).abs() / speed)
    }

    fn moving(&self) -> bool {
        self.target.is_some() || self.vel != 0.0
    }
}

/// A command holding a socket until it completes.
#[derive(Debug, Clone, Copy)]
struct Job {
    peer: SocketAddr,
    seq: Seq,
    /// The completion never leaves before the ACK.
    ack_due: Instant,
    /// A power switch (else a motion, done when it owns no axis).
    power: bool,
}

/// What the camera remembers of a controller: the last sequence number it evaluated
/// and whether that message was performed (`None`: start at 0 or 1).
struct Peer {
    last: Option<(Seq, bool)>,
    seen: Instant,
}

/// The refusal of a command in standby or while switching power.
pub(super) struct NotExecutable;

pub(super) struct Camera {
    cfg: SimConfig,
    /// When the axes were last advanced.
    at: Instant,
    power: Power,
    switching: Option<(Power, Instant)>,
    pan: Axis,
    tilt: Axis,
    zoom: Axis,
    /// Pan, tilt, zoom per preset.
    presets: Vec<[f64; 3]>,
    sockets: [Option<Job>; SOCKETS],
    peers: HashMap<SocketAddr, Peer>,
    /// Replies with their send times, in the order they were made.
    outbox: Vec<(Instant, SocketAddr, Datagram)>,
    received: u64,
    dropped: u64,
    ignored: u64,
}

impl Camera {
    pub(super) fn new(cfg: SimConfig, now: Instant) -> Self {
        let range = |r: &RangeInclusive<i16>| Axis::new(f64::from(*r.start()), f64::from(*r.end()));
        let (pan, tilt) = (range(&cfg.pan_range), range(&cfg.tilt_range));
        let zoom = Axis::new(
            f64::from(*cfg.zoom_range.start()),
            f64::from(*cfg.zoom_range.end()),
        );
        let home = [pan.pos, tilt.pos, zoom.pos];
        Camera {
            power: if cfg.powered { Power::On } else { Power::Off },
            presets: vec![home; cfg.presets.min(usize::from(u8::MAX))],
            cfg,
            at: now,
            switching: None,
            pan,
            tilt,
            zoom,
            sockets: [None; SOCKETS],
            peers: HashMap::new(),
            outbox: Vec::new(),
            received: 0,
            dropped: 0,
            ignored: 0,
        }
    }

    fn axes_mut(&mut self) -> [&mut Axis; 3] {
        [&mut self.pan, &mut self.tilt, &mut self.zoom]
    }

    fn axes(&self) -> [Axis; 3] {
        [self.pan, self.tilt, self.zoom]
    }

    /// Whether the command in socket `s` still drives an axis.
    fn owns(&self, s: usize) -> bool {
        self.axes().iter().any(|a| a.owner == Some(s))
    }

    pub(super) fn snapshot(&mut self, now: Instant) -> SimState {
        self.advance(now);
        SimState {
            power: self.power,
            switching: self.switching.map(|(to, _)| to),
            pan: self.pan.pos.round() as i16,
            tilt: self.tilt.pos.round() as i16,
            zoom: self.zoom.pos.round() as u16,
            moving: self.axes().iter().any(Axis::moving),
            busy_sockets: self.sockets.iter().flatten().count(),
            received: self.received,
            dropped: self.dropped,
            ignored: self.ignored,
        }
    }

    /// Moves time on: axes, power switch, completions.
    pub(super) fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        if let Some((to, _)) = self.switching.filter(|(_, at)| *at <= now) {
            (self.power, self.switching) = (to, None);
        }
        for axis in self.axes_mut() {
            axis.advance(dt);
        }
        self.reap(now);
    }

    /// Completes the jobs that are done.
    pub(super) fn reap(&mut self, now: Instant) {
        for s in 0..SOCKETS {
            let done = match self.sockets[s] {
                Some(job) if job.power => self.switching.is_none(),
                Some(_) => !self.owns(s),
                None => false,
            };
            if let Some(job) = self.sockets[s].take_if(|_| done) {
                let completion = Datagram::reply(job.seq, &Reply::Completion(s as u8 + 1));
                self.push(job.ack_due.max(now), job.peer, completion);
            }
        }
    }

    /// Advances, then moves the replies due by `now` to `ready`.
    pub(super) fn poll(&mut self, now: Instant, ready: &mut Vec<(SocketAddr, Vec<u8>)>) {
        self.advance(now);
        self.outbox.retain(|(due, to, datagram)| {
            let send = *due <= now;
            if send {
                ready.push((*to, datagram.encode()));
            }
            !send
        });
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let replies = self.outbox.iter().map(|(due, _, _)| *due);
        let etas = self.axes().into_iter().filter_map(|a| a.eta());
        let after = |s| Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(3600));
        let arrivals = etas.map(|s| self.at + after(s) + SLACK);
        let switched = self.switching.map(|(_, at)| at);
        replies.chain(switched).chain(arrivals).min()
    }

    fn push(&mut self, due: Instant, to: SocketAddr, datagram: Datagram) {
        if self.outbox.len() >= MAX_OUTBOX {
            tracing::warn!(%to, "visca sim: outbox full, reply dropped");
            return;
        }
        self.outbox.push((due, to, datagram));
    }

    fn send(&mut self, now: Instant, to: SocketAddr, datagram: Datagram) {
        self.push(later(now, self.cfg.ack_delay), to, datagram);
    }

    fn reply(&mut self, now: Instant, to: SocketAddr, seq: Seq, reply: Reply) {
        self.send(now, to, Datagram::reply(seq, &reply));
    }

    fn control_error(&mut self, now: Instant, to: SocketAddr, seq: Seq, error: ControlError) {
        self.send(now, to, Datagram::control(seq, Control::Error(error)));
    }

    fn peer(&mut self, now: Instant, addr: SocketAddr) -> &mut Peer {
        if !self.peers.contains_key(&addr) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.seen)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        let peer = self.peers.entry(addr).or_insert(Peer {
            last: None,
            seen: now,
        });
        peer.seen = now;
        peer
    }

    pub(super) fn on_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.received += 1;
        if self
            .cfg
            .drop_every
            .is_some_and(|n| n > 0 && self.received.is_multiple_of(u64::from(n)))
        {
            self.dropped += 1;
            return;
        }
        self.advance(now);
        let dg = match proto::decode_datagram(bytes) {
            Ok(dg) => dg,
            Err(proto::ProtoError::UnknownType(_, seq)) => {
                self.control_error(now, from, seq, ControlError::MessageType);
                return;
            }
            Err(e) => {
                self.ignored += 1;
                tracing::debug!(%from, error = %e, "visca sim: datagram ignored");
                return;
            }
        };
        let inquiry_form = dg.payload.as_bytes().get(1) == Some(&0x09);
        match dg.kind {
            PayloadType::Control => match Control::decode(dg.payload.as_bytes()) {
                Ok(Control::Reset) => {
                    self.peer(now, from).last = None;
                    self.send(
                        now,
                        from,
                        Datagram::control_reply(dg.seq, ControlReply::Ack),
                    );
                }
                // The camera's own kind of message: nothing to answer.
                Ok(Control::Error(_)) => self.ignored += 1,
                Err(_) => self.control_error(now, from, dg.seq, ControlError::MessageType),
            },
            PayloadType::Command | PayloadType::DeviceSetting if !inquiry_form => {
                self.sequenced(now, from, dg);
            }
            PayloadType::Inquiry if inquiry_form => self.sequenced(now, from, dg),
            _ => self.control_error(now, from, dg.seq, ControlError::MessageType),
        }
        self.reap(now);
    }

    /// Checks the sequence number, then evaluates the message.
    fn sequenced(&mut self, now: Instant, from: SocketAddr, dg: Datagram) {
        let in_order = match self.peer(now, from).last {
            None => dg.seq.0 <= 1,
            Some((last, performed)) => dg.seq == last.next() || (dg.seq == last && !performed),
        };
        if !in_order {
            self.control_error(now, from, dg.seq, ControlError::Sequence);
            return;
        }
        let bytes = dg.payload.as_bytes();
        let performed = match dg.kind {
            PayloadType::Command => self.command(now, from, dg.seq, bytes),
            PayloadType::Inquiry => self.inquiry(now, from, dg.seq, bytes),
            // No device setting command (`IF_Clear`, …) is simulated.
            _ => {
                self.reply(now, from, dg.seq, Reply::Error(0, ViscaError::Syntax));
                false
            }
        };
        self.peer(now, from).last = Some((dg.seq, performed));
    }

    /// Evaluates a command; true if performed (ACKed, or a cancel done).
    fn command(&mut self, now: Instant, from: SocketAddr, seq: Seq, bytes: &[u8]) -> bool {
        let cmd = match Command::decode(bytes) {
            Ok(cmd) if self.valid(&cmd) => cmd,
            _ => {
                self.reply(now, from, seq, Reply::Error(0, ViscaError::Syntax));
                return false;
            }
        };
        if let Command::Cancel(y) = cmd {
            return self.cancel(now, from, seq, y);
        }
        let Some(slot) = self.sockets.iter().position(Option::is_none) else {
            self.reply(now, from, seq, Reply::Error(0, ViscaError::BufferFull));
            return false;
        };
        let y = slot as u8 + 1;
        match self.perform(now, &cmd, Some(slot)) {
            Err(NotExecutable) => {
                self.reply(now, from, seq, Reply::Error(y, ViscaError::NotExecutable));
                return false;
            }
            Ok(true) => {
                self.reply(now, from, seq, Reply::Ack(y));
                self.reply(now, from, seq, Reply::Completion(y));
            }
            Ok(false) => {
                self.reply(now, from, seq, Reply::Ack(y));
                let (ack_due, power) = (
                    later(now, self.cfg.ack_delay),
                    matches!(cmd, Command::Power(_)),
                );
                self.sockets[slot] = Some(Job {
                    peer: from,
                    seq,
                    ack_due,
                    power,
                });
            }
        }
        true
    }

    /// Whether a decoded command's parameters suit this camera.
    pub(super) fn valid(&self, cmd: &Command) -> bool {
        let cfg = &self.cfg;
        match *cmd {
            Command::ZoomTo(z) => cfg.zoom_range.contains(&z),
            Command::Drive(d, s) => (d.pan() == 0 || s.pan > 0) && (d.tilt() == 0 || s.tilt > 0),
            Command::MoveTo(p, s) => {
                let inside = cfg.pan_range.contains(&p.pan) && cfg.tilt_range.contains(&p.tilt);
                inside && s.pan > 0 && s.tilt > 0
            }
            Command::Preset(_, n) => usize::from(n) < self.presets.len(),
            _ => true,
        }
    }

    /// Does a valid command; `Ok(true)` if it is done already, `Ok(false)` if it runs on
    /// (its axes owned by `owner`, or a power switch).
    pub(super) fn perform(
        &mut self,
        now: Instant,
        cmd: &Command,
        owner: Option<usize>,
    ) -> Result<bool, NotExecutable> {
        if self.switching.is_some() {
            return Err(NotExecutable);
        }
        let cfg = &self.cfg;
        let pan_speed =
            |v: u8| cfg.pan_speed * PAN_DEG_S[usize::from(v.clamp(1, MAX_PAN_SPEED)) - 1] / 101.0;
        let tilt_speed =
            |v: u8| cfg.tilt_speed * TILT_DEG_S[usize::from(v.clamp(1, MAX_TILT_SPEED)) - 1] / 91.0;
        let zoom_speed = |p: Option<u8>| {
            cfg.zoom_speed * f64::from(p.unwrap_or(3).min(MAX_ZOOM_SPEED) + 1) / 8.0
        };
        let (max_pan, max_tilt, max_zoom) = (cfg.pan_speed, cfg.tilt_speed, cfg.zoom_speed);
        match *cmd {
            Command::Power(p) if p == self.power => return Ok(true),
            Command::Power(p) => {
                let time = if p == Power::On {
                    cfg.power_on_time
                } else {
                    cfg.power_off_time
                };
                self.switching = Some((p, later(now, time)));
                if p == Power::Off {
                    self.axes_mut().into_iter().for_each(|a| a.drive(0.0));
                }
                return Ok(false);
            }
            _ if self.power == Power::Off => return Err(NotExecutable),
            Command::Zoom(z) => {
                let vel = match z {
                    Zoom::Stop => 0.0,
                    Zoom::Tele(p) => zoom_speed(p),
                    Zoom::Wide(p) => -zoom_speed(p),
                };
                self.zoom.drive(vel);
            }
            Command::ZoomTo(z) => self.zoom.aim(f64::from(z), max_zoom, owner),
            Command::Drive(d, s) => {
                self.pan.drive(f64::from(d.pan()) * pan_speed(s.pan));
                self.tilt.drive(f64::from(d.tilt()) * tilt_speed(s.tilt));
            }
            Command::MoveTo(Position { pan, tilt }, s) => {
                let (pan_speed, tilt_speed) = (pan_speed(s.pan), tilt_speed(s.tilt));
                self.pan.aim(f64::from(pan), pan_speed, owner);
                self.tilt.aim(f64::from(tilt), tilt_speed, owner);
            }
            Command::Home => {
                self.pan.aim(0.0, max_pan, owner);
                self.tilt.aim(0.0, max_tilt, owner);
            }
            Command::Preset(action, n) => {
                let home = [self.pan.clamp(0.0), self.tilt.clamp(0.0), self.zoom.lo];
                let [pan, tilt, zoom] = self.presets.get(usize::from(n)).copied().unwrap_or(home);
                let preset = match action {
                    PresetAction::Reset => home,
                    PresetAction::Set => [self.pan.pos, self.tilt.pos, self.zoom.pos],
                    PresetAction::Recall => {
                        self.pan.aim(pan, max_pan, owner);
                        self.tilt.aim(tilt, max_tilt, owner);
                        self.zoom.aim(zoom, max_zoom, owner);
                        [pan, tilt, zoom]
                    }
                };
                if let Some(slot) = self.presets.get_mut(usize::from(n)) {
                    *slot = preset;
                }
            }
            Command::Cancel(_) => {}
        }
        Ok(owner.is_none_or(|s| !self.owns(s)))
    }

    /// `81 2y FF`: true if a command was cancelled.
    fn cancel(&mut self, now: Instant, from: SocketAddr, seq: Seq, y: u8) -> bool {
        let slot = usize::from(y).checked_sub(1).filter(|s| *s < SOCKETS);
        let (error, performed) = match slot.and_then(|s| self.sockets[s].map(|job| (s, job))) {
            None => (ViscaError::NoSocket, false),
            Some((_, job)) if job.power => (ViscaError::NotExecutable, false),
            Some((s, _)) => {
                self.sockets[s] = None;
                for axis in self.axes_mut().into_iter().filter(|a| a.owner == Some(s)) {
                    axis.drive(0.0);
                }
                (ViscaError::Cancelled, true)
            }
        };
        self.reply(now, from, seq, Reply::Error(y, error));
        performed
    }

    /// Answers an inquiry; true if answered.
    fn inquiry(&mut self, now: Instant, from: SocketAddr, seq: Seq, bytes: &[u8]) -> bool {
        let answer = match Inquiry::decode(bytes) {
            Ok(Inquiry::Power) => Answer::Power(self.power),
            Ok(Inquiry::ZoomPosition) => Answer::ZoomPosition(self.zoom.pos.round() as u16),
            Ok(Inquiry::PanTiltPosition) => {
                let (pan, tilt) = (self.pan.pos.round() as i16, self.tilt.pos.round() as i16);
                Answer::PanTiltPosition(Position { pan, tilt })
            }
            Err(_) => {
                self.reply(now, from, seq, Reply::Error(0, ViscaError::Syntax));
                return false;
            }
        };
        self.reply(now, from, seq, Reply::Data(answer.encode()));
        true
    }
}
