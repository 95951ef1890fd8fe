//! Properties of the id allocator under arbitrary sequences of networks created, changed and
//! deleted: no table, mark or zone is ever held twice, rule priorities are shared and never
//! run out, explicit ids are honoured or refused, ids are stable for a network's life, and
//! rebuilding from recorded allocations (an operator restart) changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::allocation::{AllocationError, Allocator, IdRanges};
use mirrornet_api::fixtures;
use mirrornet_api::{Allocation, MirrorNetworkSpec, Side, SideKernelIds, validate};
use proptest::prelude::*;

/// Small ranges, so that exhaustion and explicit-id collisions actually happen.
fn ranges() -> IdRanges {
    IdRanges {
        tables: 100..=119,
        zones: 200..=219,
        rule_priorities: 300..=319,
        mark_mask: 0x0000_1f00,
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Create or update network `n` with `sides` sides, side `explicit` asking for a table.
    Put {
        n: u8,
        sides: u8,
        explicit_table: Option<u32>,
    },
    Delete {
        n: u8,
    },
    /// Rebuild the allocator from what is recorded (an operator restart).
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, 2u8..=4, prop::option::weighted(0.2, 95u32..125))
            .prop_map(|(n, sides, explicit_table)| Op::Put { n, sides, explicit_table }),
        2 => (0u8..8).prop_map(|n| Op::Delete { n }),
        1 => Just(Op::Restart),
    ]
}

fn spec(sides: u8, explicit_table: Option<u32>) -> MirrorNetworkSpec {
    fixtures::spec(
        (0..sides)
            .map(|i| Side {
                alias_prefix: format!("192.168.{}.0/24", 10 + i),
                kernel_ids: (i == 0 && explicit_table.is_some()).then(|| SideKernelIds {
                    table: explicit_table,
                    ..Default::default()
                }),
                ..fixtures::side(&format!("s{i}"), &format!("eth{i}"))
            })
            .collect(),
    )
}

/// Panics if two sides (of any networks) share a table, mark or zone, or a priority lies
/// outside the range (none is asked for explicitly here). Priorities may be shared.
fn assert_unique(recorded: &BTreeMap<String, Allocation>) {
    let mut tables = BTreeSet::new();
    let mut marks = BTreeSet::new();
    let mut zones = BTreeSet::new();
    for (net, a) in recorded {
        for s in &a.sides {
            assert!(tables.insert(s.table), "table {} twice ({net})", s.table);
            assert!(marks.insert(s.mark), "mark {:#x} twice ({net})", s.mark);
            assert!(zones.insert(s.zone), "zone {} twice ({net})", s.zone);
            assert!(
                ranges().rule_priorities.contains(&s.rule_priority),
                "priority {} outside the range ({net})",
                s.rule_priority
            );
            assert_eq!(s.mark & !a.mark_mask, 0, "mark outside the mask");
            assert_ne!(s.mark, 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ids_stay_unique_and_stable(ops in prop::collection::vec(op(), 1..60)) {
        let mut allocator = Allocator::new(ranges());
        // What status would hold: the last successful allocation of each network.
        let mut recorded: BTreeMap<String, Allocation> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put { n, sides, explicit_table } => {
                    let name = format!("net-{n}");
                    let valid = validate(&spec(sides, explicit_table)).unwrap();
                    let before = recorded.get(&name).cloned();
                    match allocator.allocate(&name, &valid) {
                        Ok(a) => {
                            prop_assert_eq!(a.sides.len(), usize::from(sides));
                            if let Some(t) = explicit_table {
                                prop_assert_eq!(a.sides[0].table, t);
                            }
                            // Sides that existed before keep their ids; an explicit table may
                            // move a table from one side of the network to another, so tables
                            // are only compared when none was asked for.
                            if let Some(before) = &before {
                                for s in &a.sides {
                                    if let Some(old) = before.sides.iter().find(|o| o.side == s.side) {
                                        prop_assert_eq!(old.mark, s.mark);
                                        prop_assert_eq!(old.zone, s.zone);
                                        prop_assert_eq!(old.rule_priority, s.rule_priority);
                                        if explicit_table.is_none() {
                                            prop_assert_eq!(old.table, s.table);
                                        }
                                    }
                                }
                            }
                            recorded.insert(name.clone(), a);
                        }
                        Err(AllocationError::ExplicitIdTaken { holder, .. }) => {
                            prop_assert_ne!(&holder, &name);
                            // Nothing changed for the network on error.
                            prop_assert_eq!(allocator.get(&name), before.as_ref());
                        }
                        Err(AllocationError::Exhausted { what, .. }) => {
                            prop_assert_ne!(what, "rulePriority", "priorities are shared");
                            prop_assert_eq!(allocator.get(&name), before.as_ref());
                        }
                        Err(e @ AllocationError::MarkOutsideMask { .. }) => {
                            prop_assert!(false, "no explicit marks were asked for: {e}");
                        }
                    }
                }
                Op::Delete { n } => {
                    let name = format!("net-{n}");
                    prop_assert_eq!(allocator.release(&name), recorded.remove(&name));
                }
                Op::Restart => {
                    allocator = Allocator::from_existing(
                        ranges(),
                        recorded.iter().map(|(n, a)| (n.as_str(), a)),
                    );
                }
            }
            assert_unique(&recorded);
            let held: BTreeMap<String, Allocation> = allocator
                .networks()
                .map(|n| (n.to_string(), allocator.get(n).unwrap().clone()))
                .collect();
            prop_assert_eq!(&held, &recorded);
        }
    }

    #[test]
    fn rebuild_gives_every_network_its_ids_back(count in 1u8..8, sides in 2u8..=4) {
        let mut allocator = Allocator::new(ranges());
        let mut recorded = BTreeMap::new();
        for n in 0..count {
            let name = format!("net-{n}");
            let valid = validate(&spec(sides, None)).unwrap();
            if let Ok(a) = allocator.allocate(&name, &valid) {
                recorded.insert(name, a);
            }
        }
        let mut rebuilt = Allocator::from_existing(
            ranges(),
            recorded.iter().map(|(n, a)| (n.as_str(), a)),
        );
        prop_assert_eq!(rebuilt.usage(), allocator.usage());
        for (name, a) in &recorded {
            let valid = validate(&spec(sides, None)).unwrap();
            prop_assert_eq!(&rebuilt.allocate(name, &valid).unwrap(), a);
        }
    }
}
