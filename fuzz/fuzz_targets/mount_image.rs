//! Fuzz target `mount_image`: mount arbitrary or damaged pool images.
//!
//! The input format and everything the target checks are in the crate's
//! library ([`pinfs_fuzz::mount_image`]) so the regression test can replay
//! saved inputs on stable without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinfs_fuzz::mount_image(data));
