//! `kvfs::fuzzing::mount_options`: see its documentation for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfs::fuzzing::mount_options(data));
