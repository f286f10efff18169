//! The Behringer X32 (and Midas M32) digital mixing console over OSC on UDP 10023: the
//! codec an adapter and a simulator share, a strict simulated console, and the adapter.
//!
//! * [`proto`]: OSC 1.0 packets through the `rosc` crate, the typed X32 requests and
//!   replies (`/xinfo`, `/status`, `/xremote`, `/meters`, `/renew`, channel faders, mutes
//!   and names), the little-endian meter blob, the fader law;
//! * [`sim`]: a console on a real UDP socket: gets and sets, change pushes to `/xremote`
//!   clients until their subscription lapses, meter blobs with moving signal while a
//!   `/meters` subscription lives, and a front panel for tests;
//! * [`adapter`]: the [`crate::devices::kit::Driver`] (`x32-osc`, class `console`), with
//!   its descriptor and control mapping in `controls`.
//!
//! Sources (stored public copies):
//! * Patrick-Gilles Maillot, "Unofficial X32/M32 OSC Remote Protocol" (v0.64 and later;
//!   also on the Behringer wiki as "OSC Remote Protocol",
//!   <https://behringerwiki.musictribe.com/index.php?title=OSC_Remote_Protocol>): UDP
//!   10023, replies to the requester's address and port, get = address alone, set =
//!   address and value, `/xinfo` `,ssss` (address, name, model, firmware), `/status`
//!   `,sss` (`active`, address, name), `/xremote` for ~10 s, `/meters` and `/renew`.
//! * Behringer wiki, "OSC Server initiated messages"
//!   (<https://behringerwiki.musictribe.com/index.php?title=OSC_Server_initiated_messages>):
//!   with `/xremote` active the console echoes a parameter's value in response to a get,
//!   a set from a client, or a change made at the desk.
//! * Meter requests as summarised from Maillot's document in a public X32 notes file
//!   ("X32/M32 Meter Requests"): `/meters ,siii <id> … <time factor>`, blobs every
//!   50 ms × time factor (1..=99, anything else counts as 1) for 10 s; blob = big-endian
//!   OSC length, then a little-endian int32 count and little-endian float32 values,
//!   linear, 1.0 = 0 dBFS, up to 8.0 (+18 dBFS); `/meters/0` has 70 values (32 inputs,
//!   8 aux returns, 8 FX returns, 16 buses, 6 matrixes), `/meters/1` 96 (32 inputs,
//!   32 gate and 32 dynamics gain reductions).
//! * The fader law (four linear dB segments, 1024 steps): `jskeet/DemoCode`, file
//!   `DigiMixer/DigiMixer.Osc/XSeriesFaderScale.cs`, matching the dB table in Maillot's
//!   document.
//! * X AIR OSC document (fw 1.11): the same get/set/`/xremote` model on port 10024.
//!
//! The codec's tests are in `tests/e2e/x32_proto.rs` (examples and property tests),
//! the simulator's and the adapter's in `tests/e2e/x32.rs`.

pub mod adapter;
mod controls;
pub mod proto;
pub mod sim;
