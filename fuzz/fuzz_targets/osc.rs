#![no_main]
//! `avbus::fuzzing::osc`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::osc(data));
