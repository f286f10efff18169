#![no_main]
//! `avbus::fuzzing::pjlink`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::pjlink(data));
