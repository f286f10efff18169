#![no_main]
//! `avbus::fuzzing::config`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::config(data));
