//! Kernel ids on one node beyond the default ranges: networks whose sides share one rule
//! priority each carry their own traffic and leave no residue, and a wider mark mask holds far
//! more than the 127 two-sided networks the default mask allows.

use mirrornet_agent::lab::{Lab, MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    SEED, SpecFile, add_network, agent, apply, assert_same, connect, delete, host_of, ping,
    require_root, second_seed, serve, snapshot,
};
use serde_json::Value;

/// Every one of the agent's calls here uses the same ranges, as the README asks.
const WIDE_MASK: [&str; 2] = ["--mark-mask", "0xfff00000"];

/// `(priority, selector text, table)` of every mirrornet rule (proto 77) in the middleman that
/// looks up a table (not the node-wide skip rule and its target), sorted: the kernel lists
/// rules of one priority in the order they were added.
fn our_rules(lab: &Lab) -> Vec<(u32, String, u32)> {
    let text = lab
        .stdout(MIDDLEMAN, &["ip", "-4", "rule", "show"])
        .unwrap();
    let mut rules: Vec<_> = text
        .lines()
        .filter(|l| l.ends_with(" proto 77") && l.contains(" lookup "))
        .map(|l| {
            let (priority, rest) = l.split_once(':').unwrap();
            let table = rest
                .split_whitespace()
                .skip_while(|w| *w != "lookup")
                .nth(1)
                .unwrap();
            (
                priority.parse().unwrap(),
                rest.split(" lookup").next().unwrap().trim().to_owned(),
                table.parse().unwrap(),
            )
        })
        .collect();
    rules.sort();
    rules
}

/// The allocation of network `i` of an apply report, as (priority, mark, table) per side.
fn ids(report: &Value, i: usize) -> Vec<(u64, u64, u64)> {
    report["networks"][i]["allocation"]["sides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["rulePriority"].as_u64().unwrap(),
                s["mark"].as_u64().unwrap(),
                s["table"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Two networks whose four sides all get priority 500 (the range holds nothing else): each
/// network's hosts reach the other side's hosts, and nobody else's; a rule deleted from under
/// one side comes back alone; each network removes exactly its own rules.
#[test]
fn networks_sharing_one_rule_priority_each_carry_their_traffic_and_delete_cleanly() {
    require_root();
    let first = SpecFile::new("shared-a", SEED);
    let second_text = second_seed();
    let second = SpecFile::new("shared-b", &second_text);
    let mut s = Scenario::build("shared-prio", &first.networks[0].valid, &[10, 11], false).unwrap();
    add_network(&mut s.lab, &second.networks[0].valid, "b", &[10, 11]);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let flags = [&WIDE_MASK[..], &["--rule-priority-range", "500-500"]].concat();
    let a = apply(&s.lab, &first, &flags);
    let b = apply(&s.lab, &second, &flags);
    let all: Vec<_> = ids(&a, 0).into_iter().chain(ids(&b, 0)).collect();
    assert!(all.iter().all(|(p, _, _)| *p == 500), "{all:?}");
    // Every mark lies under the wide mask, and none of them in the default mask's bits alone.
    assert!(
        all.iter()
            .all(|(_, m, _)| m & !0xfff0_0000 == 0 && m & 0x000f_ffff == 0)
    );
    assert_eq!(a["networks"][0]["allocation"]["markMask"], 0xfff0_0000u32);
    let rules = our_rules(&s.lab);
    let marks = rules.iter().filter(|(_, sel, _)| sel.contains("fwmark"));
    assert_eq!(
        marks.clone().map(|(p, _, _)| *p).collect::<Vec<_>>(),
        vec![500; 4],
        "{rules:?}"
    );
    // Nothing per interface; one skip rule just before the shared priority.
    assert_eq!(marks.count(), rules.len(), "{rules:?}");
    let all_rules = s
        .lab
        .stdout(MIDDLEMAN, &["ip", "-4", "rule", "show"])
        .unwrap();
    assert!(
        all_rules.contains("499:\tfrom all fwmark 0/0xfff00000 goto 1000 proto 77"),
        "{all_rules}"
    );

    // Each network's hosts reach the other side's hosts by alias, both ways, and the receiver
    // is the host of the other side of the same network.
    for (from, to) in [
        ("inner-10", "192.168.3.11"),
        ("outer-10", "192.168.3.11"),
        ("b-inner-10", "172.16.3.11"),
        ("b-outer-10", "172.16.3.11"),
    ] {
        assert!(ping(&s.lab, from, to), "{from} -> {to}");
    }
    for ns in ["outer-11", "b-outer-11"] {
        serve(&mut s, ns, 7020, 0);
    }
    for (from, to, server, seen) in [
        ("inner-10", "192.168.3.11:7020", "outer-11", "192.168.3.10"),
        (
            "b-inner-10",
            "172.16.3.11:7020",
            "b-outer-11",
            "172.16.3.10",
        ),
    ] {
        let answer = connect(&s.lab, from, to, None).unwrap();
        assert_eq!(
            (answer.server.as_str(), host_of(&answer.seen_as)),
            (server, seen)
        );
    }
    assert_eq!(apply(&s.lab, &first, &flags)["writes"], 0);
    assert_eq!(apply(&s.lab, &second, &flags)["writes"], 0);

    // One of four rules at priority 500 goes, named by its own mark and table: the apply puts
    // back that one and nothing else.
    let (_, mark, table) = ids(&b, 0)[1];
    let selector = format!("{mark:#x}/0xfff00000");
    let table = table.to_string();
    s.lab
        .exec(
            MIDDLEMAN,
            &[
                "ip", "rule", "del", "priority", "500", "fwmark", &selector, "lookup", &table,
            ],
        )
        .unwrap();
    assert_eq!(our_rules(&s.lab).len(), rules.len() - 1);
    assert_eq!(apply(&s.lab, &second, &flags)["writes"], 1);
    assert_eq!(our_rules(&s.lab), rules);

    // Deleting the first network takes exactly its rules; the second keeps working.
    delete(&s.lab, &first);
    let tables_b: Vec<u32> = ids(&b, 0).iter().map(|(_, _, t)| *t as u32).collect();
    let left = our_rules(&s.lab);
    assert!(!left.is_empty());
    assert!(
        left.iter().all(|(_, _, t)| tables_b.contains(t)),
        "{left:?}"
    );
    assert_eq!(
        left,
        rules
            .iter()
            .filter(|(_, _, t)| tables_b.contains(t))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(ping(&s.lab, "b-inner-10", "172.16.3.11"));
    assert!(!ping(&s.lab, "inner-10", "192.168.3.11"));
    assert_eq!(apply(&s.lab, &second, &flags)["writes"], 0);
    delete(&s.lab, &second);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

/// Networks `n0000`.. on interfaces `n<i>a`/`n<i>b` (peers in a sink namespace), subnet
/// `10.H.L.0/24` with alias `10.(64+H).L.0/24` on both sides.
fn many(count: usize) -> String {
    (0..count)
        .map(|i| {
            let (h, l) = (i >> 8, i & 255);
            format!(
                "apiVersion: mirrornet.io/v1alpha1\nkind: MirrorNetwork\nmetadata:\n  name: n{i:04}\n\
                 spec:\n  subnet: 10.{h}.{l}.0/24\n  gatewayAddress: 10.{h}.{l}.1\n  sides:\n\
                 \x20   - {{name: a, interface: n{i}a, aliasPrefix: 10.{a}.{l}.0/24}}\n\
                 \x20   - {{name: b, interface: n{i}b, aliasPrefix: 10.{a}.{l}.0/24}}\n",
                a = 64 + h
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A middleman with the interfaces of the first two networks of [`many`] (their peers in a
/// `sink` namespace), and those two networks' file.
fn two_networks_lab(tag: &str) -> (Lab, String) {
    require_root();
    let mut lab = Lab::new(tag);
    lab.add_namespace(MIDDLEMAN).unwrap();
    lab.add_namespace("sink").unwrap();
    lab.veth_pairs(
        MIDDLEMAN,
        "sink",
        &["n0a", "n0b", "n1a", "n1b"].map(String::from),
    )
    .expect("the networks' interfaces");
    (lab, many(2))
}

/// 160 two-sided networks (320 sides: the default mask's 255 marks would not do) with the
/// mask 0xfff00000, and 80 rule priorities for 320 sides: all apply, with distinct marks and
/// tables and four sides per priority; a converged re-apply writes nothing; the delete leaves
/// the node as it was. (The count keeps the test near 10 s with a debug agent.)
#[test]
fn a_wide_mark_mask_holds_more_than_127_networks() {
    const N: usize = 160;
    require_root();
    let mut lab = Lab::new("wide-mask");
    lab.add_namespace(MIDDLEMAN).unwrap();
    lab.add_namespace("sink").unwrap();
    let names: Vec<String> = (0..N)
        .flat_map(|i| ["a", "b"].map(|side| format!("n{i}{side}")))
        .collect();
    lab.veth_pairs(MIDDLEMAN, "sink", &names)
        .expect("the networks' interfaces");
    let spec = SpecFile::new("wide-mask", &many(N));
    let before = snapshot(&lab, MIDDLEMAN).unwrap();

    // The default mask stops at 127 networks, before any write.
    let refused = agent(&lab, &["plan", "--file", spec.path()], &[]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("no free mark"), "{error}");

    let flags = [&WIDE_MASK[..], &["--rule-priority-range", "500-579"]].concat();
    let report = apply(&lab, &spec, &flags);
    let sides: Vec<(u64, u64, u64)> = (0..N).flat_map(|i| ids(&report, i)).collect();
    assert_eq!(sides.len(), 2 * N);
    let distinct = |pick: fn(&(u64, u64, u64)) -> u64| {
        sides
            .iter()
            .map(pick)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(distinct(|s| s.1), 2 * N, "marks are one per side");
    assert_eq!(distinct(|s| s.2), 2 * N, "tables are one per side");
    assert_eq!(distinct(|s| s.0), N / 2, "priorities are all used");
    for p in 500..580 {
        assert_eq!(sides.iter().filter(|s| s.0 == p).count(), 4, "priority {p}");
    }
    let rules = our_rules(&lab);
    let count = |what: &str| {
        rules
            .iter()
            .filter(|(_, sel, _)| sel.contains(what))
            .count()
    };
    assert_eq!(count("fwmark"), 2 * N);
    assert_eq!(
        rules.len(),
        2 * N,
        "one rule per side, nothing per interface"
    );

    let again = apply(&lab, &spec, &flags);
    assert_eq!(again["writes"], 0, "{:?}", again["steps"]);
    delete(&lab, &spec);
    assert_same(&before, &snapshot(&lab, MIDDLEMAN).unwrap(), "after");
}

/// A node holds its networks under one mark mask: a network under another mask while others
/// keep theirs is refused before any write, naming both masks and the network in the way (its
/// marks could match the others' rules); every network moved in one change is accepted, and
/// no rule of the old mask is left.
#[test]
fn a_node_moves_to_another_mark_mask_with_every_network_at_once() {
    let (lab, both) = two_networks_lab("mask-move");
    let (first, second) = both.split_once("---\n").unwrap();
    let (first, second, both) = (
        SpecFile::new("mask-first", first),
        SpecFile::new("mask-second", second),
        SpecFile::new("mask-both", &both),
    );
    let before = snapshot(&lab, MIDDLEMAN).unwrap();
    apply(&lab, &first, &[]);
    let held = snapshot(&lab, MIDDLEMAN).unwrap();

    let mut args = vec!["apply", "--file", second.path()];
    args.extend(WIDE_MASK);
    let refused = agent(&lab, &args, &[]);
    assert!(!refused.status.success(), "a second mask was accepted");
    let error = String::from_utf8_lossy(&refused.stderr);
    for needle in ["n0001", "0xfff00000", "n0000", "0xff000000"] {
        assert!(error.contains(needle), "{needle} missing from: {error}");
    }
    assert_same(
        &held,
        &snapshot(&lab, MIDDLEMAN).unwrap(),
        "after the refusal",
    );

    apply(&lab, &both, &WIDE_MASK);
    let masks: Vec<String> = lab
        .stdout(MIDDLEMAN, &["ip", "-4", "rule", "show"])
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(" proto 77") && l.contains("fwmark"))
        .map(|l| {
            l.split('/')
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        !masks.is_empty() && masks.iter().all(|m| m == "0xfff00000"),
        "{masks:?}"
    );
    let mut args = vec!["delete", "--file", both.path()];
    args.extend(WIDE_MASK);
    assert!(agent(&lab, &args, &[]).status.success());
    assert_same(
        &before,
        &snapshot(&lab, MIDDLEMAN).unwrap(),
        "after the delete",
    );
}

/// The table, zone and priority ranges changed on a node that holds a network: the network
/// keeps the ids it holds (its converged re-apply under the new ranges writes nothing, so its
/// connections and its conntrack zones stay), and only a network new to the node draws from
/// the new ranges, next to it; both delete without residue.
#[test]
fn new_id_ranges_leave_the_networks_held_as_they_are() {
    let (lab, both) = two_networks_lab("range-move");
    let (first, _) = both.split_once("---\n").unwrap();
    let (first, both) = (
        SpecFile::new("range-first", first),
        SpecFile::new("range-both", &both),
    );
    let before = snapshot(&lab, MIDDLEMAN).unwrap();
    let held = ids(&apply(&lab, &first, &[]), 0);
    let programmed = snapshot(&lab, MIDDLEMAN).unwrap();

    let moved = [
        "--table-range",
        "30000-30099",
        "--zone-range",
        "3000-3099",
        "--rule-priority-range",
        "700-799",
    ];
    let again = apply(&lab, &first, &moved);
    assert_eq!(
        again["writes"], 0,
        "the held network was rewritten: {again}"
    );
    assert_eq!(ids(&again, 0), held);
    assert_same(
        &programmed,
        &snapshot(&lab, MIDDLEMAN).unwrap(),
        "re-applied under new ranges",
    );

    let report = apply(&lab, &both, &moved);
    let zones = |i: usize| -> Vec<u64> {
        report["networks"][i]["allocation"]["sides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["zone"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&report, 0), held, "the first network kept its ids");
    for ((priority, _, table), zone) in ids(&report, 1).into_iter().zip(zones(1)) {
        assert!((700..=799).contains(&priority), "priority {priority}");
        assert!((30000..=30099).contains(&table), "table {table}");
        assert!((3000..=3099).contains(&zone), "zone {zone}");
    }
    let mut args = vec!["delete", "--file", both.path()];
    args.extend(moved);
    assert!(agent(&lab, &args, &[]).status.success());
    assert_same(
        &before,
        &snapshot(&lab, MIDDLEMAN).unwrap(),
        "after the delete",
    );
}
