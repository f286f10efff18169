//! avbus: a low-latency event bus for networked audio/video control systems.
//!
//! Map of the crate:
//! * [`topic`]: topic names and filters (validation, matching);
//! * [`value`]: values (MessagePack) and their JSON mapping;
//! * [`model`]: device descriptors, typed controls, command validation;
//! * [`protocol`]: the wire messages and their framing;
//! * [`config`]: the TOML configuration and its defaults;
//! * [`auth`]: credentials, the rules attached to them, guessing backoff;
//! * [`tls`]: rustls on the bus's listeners and in the client;
//! * [`bus`]: the bus process (listeners, router, connections, outboxes);
//! * [`gateway`]: HTTP and WebSocket for browsers (the panel, the JavaScript client);
//! * [`client`]: the Rust client library for panels, adapters and tools;
//! * [`cli`]: the `avbus` command line;
//! * [`mod@bench`]: the avbus benchmark workloads behind `avbus bench`;
//! * [`soak`]: `avbus soak`, a bounded run of a site under churn with end checks;
//! * [`devices`]: adapters and simulators (the `devices/` directory at the top level).
//!
//! `docs/architecture.md` explains the tasks, channels and their bounds.

pub mod auth;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
#[path = "../devices/mod.rs"]
pub mod devices;
pub mod fuzzing;
pub mod gateway;
pub mod model;
pub mod protocol;
pub mod soak;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod value;
