//! Everything read from outside decodes to a value or a typed error, never a panic; valid
//! values round-trip; accepted names always make safe znode paths.

use pop_core::assignment::parse_assignment;
use pop_core::journal::{decode, Record};
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::settings::{parse_machines, render_machines, Settings};
use pop_core::zk::{RequestId, ZkReply};
use pop_core::{Input, Timestamp};
use proptest::prelude::*;
use std::collections::BTreeSet;

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn znode_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_machines(&bytes);
        let _ = Settings::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text);
        let _ = parse_assignment(&text);
    }

    #[test]
    fn json_shaped_payloads_never_panic(text in r#"[\[\]{}",:0-9a-z_ .-]{0,60}"#) {
        let _ = parse_machines(text.as_bytes());
        let _ = Settings::parse(text.as_bytes());
        let _ = decode(&text);
    }

    #[test]
    fn machine_lists_round_trip(names in prop::collection::btree_set("[a-z0-9-]{1,12}", 0..6)) {
        let rendered = render_machines(&names);
        prop_assert_eq!(parse_machines(&rendered).expect("valid"), names);
    }

    #[test]
    fn accepted_names_make_one_path_component(name in "\\PC{0,120}") {
        match ServiceName::new(&name) {
            Ok(service) => {
                let path = paths::service(service.as_str());
                prop_assert_eq!(path.matches('/').count(), 2, "{}", path);
                prop_assert!(paths::parent(&path) == Some(paths::SERVICES));
                prop_assert!(MachineId::new(&name).is_ok());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn journal_records_round_trip(id in 0..1000u64, at in 0..u64::MAX / 2, data in prop::collection::vec(any::<u8>(), 0..32)) {
        let record = Record::Input {
            at: Timestamp::from_millis(at),
            input: Input::Reply {
                id: RequestId(id),
                reply: ZkReply::Data { data, stat: Default::default() },
            },
        };
        let journal = decode(&(record.to_line() + "\n")).expect("decodes");
        prop_assert_eq!(journal.records.len(), 1);
        prop_assert_eq!(journal.records[0].to_line(), record.to_line());
    }
}

#[test]
fn a_settings_assignment_takes_json_or_a_string() {
    let set: BTreeSet<String> = ["m1".to_string()].into();
    assert_eq!(render_machines(&set), br#"["m1"]"#);
    assert!(parse_assignment("a=").is_ok());
    assert!(parse_assignment("noequals").is_err());
}
