//! The request engine: one message at a time over the connected UDP socket, numbered,
//! retransmitted with the same number and resynchronised with `RESET`, as "Request
//! engine and retransmission" in [`super`] describes.

use std::io;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{not_connected, Retry, ViscaDriver};
use crate::devices::kit::DeviceError;
use crate::devices::visca::proto::{
    decode_datagram, Answer, Control, ControlError, ControlReply, Datagram, Escaped, Inquiry,
    Payload, PayloadType, Reply, Seq, ViscaError,
};

/// The open UDP link and its numbering.
pub(super) struct Link {
    pub(super) socket: UdpSocket,
    /// The number the next message gets, and the one the last got.
    pub(super) next: Seq,
    pub(super) last: Seq,
    pub(super) buf: Box<[u8]>,
}

/// What the camera said, as far as this driver cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Ack,
    Completion,
    Refused(ViscaError),
    Data(Payload),
    /// Control `ERROR 0F 01`.
    SequenceError,
    /// Control `ERROR 0F 02`.
    TypeError,
    /// The control reply to `RESET`.
    ResetDone,
}

/// What a message waits for: a command its ACK, then its completion for at most this
/// long; an inquiry its answer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    Completion(Duration),
    Answer(Inquiry),
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A command the camera took; true if its completion came in time.
    Accepted(bool),
    Answer(Answer),
    Refused(ViscaError),
}

impl ViscaDriver {
    /// Sends one message and waits for what `expect` says, retransmitting as the
    /// module documentation describes.
    pub(super) async fn request(
        &mut self,
        payload: Payload,
        expect: Expect,
    ) -> Result<Outcome, DeviceError> {
        let Retry { try_timeout, tries } = self.settings.retry;
        let kind = match expect {
            Expect::Completion(_) => PayloadType::Command,
            Expect::Answer(_) => PayloadType::Inquiry,
        };
        // Bounded, so that no camera can keep the driver asking forever.
        let (mut resets, mut reasks) = (0, 0);
        'message: loop {
            let seq = self.take_seq()?;
            let bytes = Datagram::new(kind, seq, payload).encode();
            for attempt in 1..=tries.max(1) {
                self.send(&bytes).await?;
                let deadline = Instant::now() + try_timeout;
                while let Some(event) = self.recv_for(Some(seq), deadline).await? {
                    // `0F 01` to a retransmission: performed, only the reply was lost.
                    let lost = attempt > 1 && event == Event::SequenceError;
                    match (event, expect) {
                        (Event::Refused(e), _) => return Ok(Outcome::Refused(e)),
                        (Event::Completion, Expect::Completion(_)) => {
                            return Ok(Outcome::Accepted(true))
                        }
                        (Event::Ack, Expect::Completion(wait)) => {
                            return self.completion(seq, wait).await
                        }
                        (Event::SequenceError, Expect::Completion(wait)) if lost => {
                            tracing::debug!(camera = %self.camera, %seq, "command performed, reply lost");
                            return self.completion(seq, wait).await;
                        }
                        (Event::SequenceError, Expect::Answer(_)) if lost && reasks < tries => {
                            tracing::debug!(camera = %self.camera, %seq, "answer lost: asking again");
                            reasks += 1;
                            continue 'message;
                        }
                        (Event::Data(data), Expect::Answer(inquiry)) => {
                            match Answer::decode(inquiry, data.as_bytes()) {
                                Ok(answer) => return Ok(Outcome::Answer(answer)),
                                Err(e) => {
                                    tracing::warn!(camera = %self.camera, %seq, error = %e, "bad answer ignored")
                                }
                            }
                        }
                        // The camera does not know our numbering (it restarted).
                        (Event::SequenceError, _) if !lost && resets == 0 => {
                            tracing::info!(camera = %self.camera, %seq, "sequence number refused: RESET");
                            resets += 1;
                            self.reset().await?;
                            continue 'message;
                        }
                        (Event::SequenceError | Event::TypeError, _) => {
                            let what = Escaped::new(payload.as_bytes());
                            let why = format!("{}: {event:?} for {what}", self.camera);
                            return Err(DeviceError::Protocol(why));
                        }
                        (other, _) => {
                            tracing::debug!(camera = %self.camera, %seq, ?other, "unexpected reply")
                        }
                    }
                }
                tracing::debug!(camera = %self.camera, %seq, attempt, "no answer: retransmitting");
            }
            let what = Escaped::new(payload.as_bytes());
            let why = format!("{}: no answer to {what} after {tries} tries", self.camera);
            return Err(DeviceError::Unreachable(why));
        }
    }

    /// After a command was accepted: its completion, for at most `wait`.
    async fn completion(&mut self, seq: Seq, wait: Duration) -> Result<Outcome, DeviceError> {
        let deadline = Instant::now() + wait;
        while let Some(event) = self.recv_for(Some(seq), deadline).await? {
            match event {
                Event::Completion => return Ok(Outcome::Accepted(true)),
                // E.g. cancelled from another controller: it did not finish.
                Event::Refused(e) => return Ok(Outcome::Refused(e)),
                // A late ACK or `0F 01` to one of our own retransmissions.
                _ => {}
            }
        }
        Ok(Outcome::Accepted(false))
    }

    /// Control `RESET`, retransmitted like any message; numbering restarts at 1.
    pub(super) async fn reset(&mut self) -> Result<(), DeviceError> {
        let Retry { try_timeout, tries } = self.settings.retry;
        // The camera ignores the header's number; 1 as companion-module-sony-visca sends.
        let bytes = Datagram::control(Seq(1), Control::Reset).encode();
        for _ in 0..tries.max(1) {
            self.send(&bytes).await?;
            let deadline = Instant::now() + try_timeout;
            while let Some(event) = self.recv_for(None, deadline).await? {
                if let (Event::ResetDone, Some(link)) = (event, &mut self.link) {
                    link.next = Seq(1);
                    return Ok(());
                }
            }
        }
        let why = format!("{}: no reply to RESET after {tries} tries", self.camera);
        Err(DeviceError::Unreachable(why))
    }

    fn take_seq(&mut self) -> Result<Seq, DeviceError> {
        let link = self.link.as_mut().ok_or_else(not_connected)?;
        (link.last, link.next) = (link.next, link.next.next());
        Ok(link.last)
    }

    /// Sends one datagram. An ICMP error from an earlier one ("port unreachable")
    /// counts as this copy being lost.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let link = self.link.as_ref().ok_or_else(not_connected)?;
        match link.socket.send(bytes).await {
            Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => {
                Err(DeviceError::Unreachable(format!("{}: {e}", self.camera)))
            }
            _ => Ok(()),
        }
    }

    /// The next event for `seq` (any number when `None`) before `deadline`; `None` at
    /// the deadline or when the camera's port is unreachable. Datagrams for other
    /// numbers are logged and dropped.
    async fn recv_for(
        &mut self,
        seq: Option<Seq>,
        deadline: Instant,
    ) -> Result<Option<Event>, DeviceError> {
        loop {
            let link = self.link.as_mut().ok_or_else(not_connected)?;
            let n = match tokio::time::timeout_at(deadline, link.socket.recv(&mut link.buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
                Ok(Err(e)) => return Err(DeviceError::Unreachable(format!("receive: {e}"))),
            };
            match decode(&self.camera, &link.buf[..n]) {
                Some((got, event)) if seq.is_none_or(|want| want == got) => return Ok(Some(event)),
                Some((got, event)) => {
                    self.stray(got, event);
                }
                None => {}
            }
        }
    }
}

/// Decodes a datagram from the camera into its number and event; logs and drops
/// anything undecodable or not meant for a controller.
pub(super) fn decode(camera: &str, bytes: &[u8]) -> Option<(Seq, Event)> {
    let decoded = decode_event(bytes);
    if let Err(error) = &decoded {
        tracing::warn!(camera, bytes = %Escaped::new(bytes), %error, "undecodable datagram ignored");
    }
    decoded.ok()
}

fn decode_event(bytes: &[u8]) -> Result<(Seq, Event), String> {
    let dg = decode_datagram(bytes).map_err(|e| e.to_string())?;
    let payload = dg.payload.as_bytes();
    let event = match dg.kind {
        PayloadType::Reply => match Reply::decode(payload).map_err(|e| e.to_string())? {
            Reply::Ack(_) => Event::Ack,
            Reply::Completion(_) => Event::Completion,
            Reply::Error(_, e) => Event::Refused(e),
            Reply::Data(data) => Event::Data(data),
        },
        PayloadType::Control => match Control::decode(payload).map_err(|e| e.to_string())? {
            Control::Error(ControlError::Sequence) => Event::SequenceError,
            Control::Error(ControlError::MessageType) => Event::TypeError,
            Control::Reset => return Err("a RESET from the camera".into()),
        },
        PayloadType::ControlReply => {
            ControlReply::decode(payload).map_err(|e| e.to_string())?;
            Event::ResetDone
        }
        other => return Err(format!("a {other:?} message from the camera")),
    };
    Ok((dg.seq, event))
}
