//! Data another client wrote into a machines or settings znode: parsing must never panic,
//! and whatever parses as settings must turn into a launch without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop_core::launch::Launch;
use pop_core::settings::{parse_machines, render_machines, Settings};

fuzz_target!(|data: &[u8]| {
    if let Ok(machines) = parse_machines(data) {
        let again = parse_machines(&render_machines(&machines)).expect("rendered list parses");
        assert_eq!(again, machines);
    }
    if let Ok(settings) = Settings::parse(data) {
        let _ = Launch::new("fuzz", "machine", &settings);
    }
});
