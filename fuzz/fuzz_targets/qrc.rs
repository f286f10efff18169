#![no_main]
//! `avbus::fuzzing::qrc`; see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| avbus::fuzzing::qrc(data));
