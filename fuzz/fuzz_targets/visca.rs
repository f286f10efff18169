#![no_main]
//! `avbus::fuzzing::visca`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::visca(data));
