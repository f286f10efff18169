//! Every integration test of avbus, in one test binary (`cargo test --test e2e`).
//!
//! Each test binary links the whole crate; one per file made two dozen executables of
//! about 40 MB each, more than CI's disk held. Here each former `tests/<name>.rs` is a
//! module, so a test's name starts with its file's: `cargo test --test e2e pjlink::`
//! runs the PJLink adapter's tests, `cargo test --test e2e faults::` the network faults.
//!
//! The tests share one process and run on parallel threads, so none may change what
//! the process holds for all of them: no environment variables, current directory,
//! signal handlers, resource limits or global tracing subscriber (`extron.rs` captures
//! logs on its own runtime's threads only); fixed ports are not bound (every listener
//! takes port 0); the fault tests enter network namespaces only on threads of their
//! own (`faults/netns.rs`). The tests that load the whole machine take
//! [`common::HEAVY`] and run one at a time.

mod common;

mod browser;
mod cli;
mod commands;
mod docs;
mod durability;
mod extron;
mod faults;
mod fuzz_regressions;
mod gateway;
mod kit;
mod pjlink;
mod props;
mod pubsub;
mod python_client;
mod qrc;
mod robustness;
mod soak;
mod telemetry;
mod tls;
mod trust;
mod visca;
mod x32;
mod x32_proto;
mod x32_telemetry;
