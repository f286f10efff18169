//! Placeholder: the qrc simulator and protocol codec are being written.

pub mod proto;
pub mod sim;
