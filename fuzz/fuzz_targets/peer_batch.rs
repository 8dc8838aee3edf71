#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mrr_fuzz::peer_batch(data));
