#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mrr_fuzz::handshake(data));
