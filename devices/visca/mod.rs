//! VISCA over IP (Sony's PTZ camera protocol on UDP 52381): the codec an adapter and a
//! simulator share, and a strict simulated camera.
//!
//! * [`proto`]: the 8-byte datagram header and typed VISCA commands, inquiries, replies
//!   and control messages;
//! * [`sim`]: a camera on a real UDP socket with per-controller sequence numbers, two
//!   command sockets, timed power switching and integrated pan/tilt/zoom motion.
//!
//! Sources (stored public copies; no Sony document was available whole):
//! * Sony SRG-300H technical manual, VISCA over IP pages: payload types, length 1–16,
//!   sequence numbers, `RESET` (`01`, header number ignored, camera's number back to 0),
//!   control `ERROR` `0F 01`/`0F 02` listed among control *commands* (type `0200`), the
//!   control reply `01`, and the retransmission table (a repeat of a performed message
//!   gets `0F 01`; a repeat of one that got an error is evaluated again):
//!   <https://manualshive.com/en/manual/sony/srg300h/400108?page=32> and
//!   <http://88.208.23.73:8080/en/manual/sony/srg300h/400108?page=31>.
//! * Sony SRG-300H technical manual, "Socket number" and "Command execution cancel": two
//!   sockets, inquiries answered even when both are busy, `8X 2Y FF` with X locked to 1
//!   over IP: <https://manual.onestart.ai/manuals/Sony-SRG-300H-Technical-Manual-5668861?page=26>.
//! * ACK/completion/error messages (`z0 4y`, `z0 5y`, `z0 60 02`, `z0 60 03`, `z0 6y 04`,
//!   `z0 6y 05`, `z0 6y 41`): Sony EVI-H100S manual p. 29
//!   (<https://manualsbrain.com/es/manuals/1047691/?page=29>) and the Vaddio/Sony
//!   BRC-Z700 manual p. 8 (<https://azmanual.top/manuals/459453/vaddio-sony-brc-z700.html?page=8>).
//! * Command and inquiry bytes, pan/tilt/zoom ranges, the pan/tilt speed table and 16
//!   presets: the SRG-300SE technical manual as transcribed in
//!   `bitfocus/companion-module-sony-visca`, file `protocol/Sony_SRG-300SE.html`.
//! * How a widely used controller does it: the same repository's `src/visca.js` sends
//!   `RESET` as `02 00 00 01 00 00 00 01 01` and then numbers messages from 1.
//!
//! The tests of both modules (`proto_tests.rs`, `sim_tests.rs`) are declared here, so
//! that they stay black-box: they use only the public API the adapter uses.

pub mod adapter;
pub mod proto;
pub mod sim;

#[cfg(test)]
#[path = "proto_tests.rs"]
mod codec_tests;

#[cfg(test)]
#[path = "sim_tests.rs"]
mod sim_tests;
