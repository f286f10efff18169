#![no_main]
//! `avbus::fuzzing::datagram`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::datagram(data));
