#![no_main]
//! `avbus::fuzzing::extron`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::extron(data));
