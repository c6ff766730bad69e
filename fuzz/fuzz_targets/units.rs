//! Quantities and durations on any text: never panic; an error echoes the input; a parsed
//! duration formats to text that parses back to a value no larger (the formatter drops the
//! sub-second part of durations over a second), and exactly the same in whole seconds.
#![no_main]

use gpu_agent::units::{format_duration, parse_duration, parse_quantity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_quantity(text) {
        assert_eq!(e.input, text);
    }
    match parse_duration(text) {
        Ok(d) => {
            let again = parse_duration(&format_duration(d)).expect("formatted duration parses");
            assert!(again <= d, "{text:?}: {d:?} -> {again:?}");
            if d.subsec_nanos() == 0 {
                assert_eq!(again, d, "{text:?}");
            }
        }
        Err(e) => assert_eq!(e.input, text),
    }
});
