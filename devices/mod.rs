//! Device adapters and their simulators — where integrators add devices.
//!
//! An adapter is a bus client with the `adapter` role: it declares its devices with
//! typed controls, publishes their state, and answers the commands the bus routes to
//! it. Adapters use the ordinary client library, so the same code runs inside the bus
//! (over an in-process [`crate::bus::LocalConnector`]) or as its own process over TCP.
//!
//! * [`kit`]: the `Driver` trait and the `Host` runtime every adapter runs on;
//! * one module per protocol, each with its codec, simulator and adapter:
//!   [`pjlink`], [`extron`], [`qrc`], [`visca`], [`x32`];
//! * [`virtual_room`]: the `virtual` driver, devices with no hardware at all;
//! * [`registry`]: `[[device]]` driver names → adapters; [`sims`]: `avbus sim`;
//! * [`demo`]: `avbus demo` itself.

pub mod demo;
pub mod extron;
pub mod kit;
pub mod pjlink;
pub mod qrc;
pub mod registry;
pub mod sims;
pub mod udp;
pub mod virtual_room;
pub mod visca;
pub mod x32;
