//! Properties of the shared validation over arbitrary specs: it never panics, what it accepts
//! survives a YAML and a JSON round trip unchanged, and every rejection names a field.

use mirrornet_api::{Backend, MirrorNetworkSpec, Side, validate};
use proptest::prelude::*;

/// Prefix-like strings: mostly well-formed (so that deep checks are reached), sometimes junk.
fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u8..4,
            0u8..4,
            prop_oneof![Just(24u8), Just(25), Just(16), 0u8..=33]
        )
            .prop_map(|(a, b, len)| format!("192.168.{a}.{b}/{len}")),
        (0u8..4, prop_oneof![Just(64u8), Just(48), 0u8..=129])
            .prop_map(|(a, len)| format!("fd00:{a}::/{len}")),
        ".*",
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 0u8..=255).prop_map(|(a, b)| format!("192.168.{a}.{b}")),
        (0u8..4, 0u16..4).prop_map(|(a, b)| format!("fd00:{a}::{b:x}")),
        ".*",
    ]
}

fn side() -> impl Strategy<Value = Side> {
    (
        prop_oneof!["[a-z]{1,6}", ".{0,70}"],
        prop_oneof!["eth[0-3]", ".{0,20}"],
        prefix(),
    )
        .prop_map(|(name, interface, alias_prefix)| Side {
            name,
            interface,
            alias_prefix,
            kernel_ids: None,
            take_over_node_interface: false,
        })
}

/// Specs close to valid ones: right shape, small variations that hit each rule.
fn plausible_spec() -> impl Strategy<Value = MirrorNetworkSpec> {
    (
        0u8..2,
        0u8..=255,
        prop::collection::vec((0u8..4, 0u8..3, 0u8..4), 1..5),
    )
        .prop_map(|(net, host, sides)| MirrorNetworkSpec {
            node_selector: None,
            subnet: format!("10.{net}.0.0/16"),
            gateway_address: format!("10.0.0.{host}"),
            host_prefix: None,
            sides: sides
                .into_iter()
                .map(|(name, iface, alias)| Side {
                    name: ["inner", "outer", "lab", "twin"][name as usize].into(),
                    interface: format!("eth{iface}"),
                    alias_prefix: format!("10.{}.0.0/16", alias + 1),
                    kernel_ids: None,
                    take_over_node_interface: false,
                })
                .collect(),
            backend: Backend::Auto,
            direction: Default::default(),
            answer_only: Vec::new(),
            allow: Vec::new(),
            suspend: false,
            verify: None,
        })
}

fn spec() -> impl Strategy<Value = MirrorNetworkSpec> {
    prop_oneof![plausible_spec(), arbitrary_spec()]
}

fn arbitrary_spec() -> impl Strategy<Value = MirrorNetworkSpec> {
    (
        prefix(),
        address(),
        prop::collection::vec(side(), 0..5),
        prop_oneof![
            Just(Backend::Auto),
            Just(Backend::Vrf),
            Just(Backend::PolicyRouting)
        ],
    )
        .prop_map(
            |(subnet, gateway_address, sides, backend)| MirrorNetworkSpec {
                node_selector: None,
                subnet,
                gateway_address,
                host_prefix: None,
                sides,
                backend,
                direction: Default::default(),
                answer_only: Vec::new(),
                allow: Vec::new(),
                suspend: false,
                verify: None,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepted_specs_round_trip_and_rejections_name_a_field(spec in spec()) {
        match validate(&spec) {
            Ok(valid) => {
                let json = serde_json::to_string(&spec).unwrap();
                let back: MirrorNetworkSpec = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&back, &spec);
                let yaml = serde_saphyr::to_string(&spec).unwrap();
                let back: MirrorNetworkSpec = serde_saphyr::from_str(&yaml).unwrap();
                prop_assert_eq!(&back, &spec);
                prop_assert_eq!(validate(&back).unwrap(), valid);
            }
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert!(e.field.starts_with("spec."), "no field path in {e:?}");
                    prop_assert!(!e.reason.is_empty());
                }
            }
        }
    }
}

#[test]
fn the_generator_reaches_accepted_specs() {
    // Guards the property above against a generator that only ever produces junk.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let accepted = (0..5000)
        .filter(|_| validate(&spec().new_tree(&mut runner).unwrap().current()).is_ok())
        .count();
    assert!(accepted > 0, "no generated spec was valid");
}
