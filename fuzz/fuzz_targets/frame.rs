#![no_main]
//! `avbus::fuzzing::frame`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::frame(data));
