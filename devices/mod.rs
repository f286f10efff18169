//! Device adapters and their simulators — where integrators add devices.
//!
//! An adapter is a bus client with the `adapter` role: it declares its devices with
//! typed controls, publishes their state, and answers the commands the bus routes to
//! it. Adapters use the ordinary client library, so the same code runs inside the bus
//! (over an in-process [`crate::bus::LocalConnector`]) or as its own process over TCP.
//!
//! * [`virtual_room`]: a simulated room (projector, mixer, camera) that needs no
//!   hardware; it is what `avbus demo` runs until the real protocol adapters land.
//! * [`demo`]: `avbus demo` itself.

pub mod demo;
pub mod extron;
pub mod kit;
pub mod pjlink;
pub mod qrc;
pub mod registry;
pub mod sims;
pub mod virtual_room;
pub mod visca;
pub mod x32;
