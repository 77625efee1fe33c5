#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pacs_mirror_agent::fuzzing::bucket_json(data));
