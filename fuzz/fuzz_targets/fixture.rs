//! `gpu::fixture::parse` on any bytes: never panics; every error has a path and a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = gpu_agent::gpu::fixture::parse(text) {
        assert!(!errors.is_empty());
        for e in errors {
            assert!(!e.path.trim().is_empty(), "error without a path: {e:?}");
            assert!(
                !e.message.trim().is_empty(),
                "error without a message: {e:?}"
            );
        }
    }
});
