#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| unet_edge_fuzz::targets::eval_labels(data));
