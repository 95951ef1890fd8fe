//! DESIGN.md section 4 against the real kernel, backend policy routing: every test builds its
//! own namespaces (unique names, removed on success and failure) and drives the real agent
//! binary in the middleman namespace.

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    SEED, SpecFile, agent, alias_of, apply, assert_same, connect, crosses_both_ways_to_every_host,
    delete, host_of, identical_tuples_land_in_two_zones, nft_table_both_ways, ping, require_root,
    scenario_of, seed_scenario, serve, snapshot, tens_reach_the_other_sides_elevens, vrf, zone_of,
};

const THREE: &str = include_str!("../../examples/three-sides.yaml");
const IPV6: &str = include_str!("../../examples/ipv6.yaml");

#[test]
fn ping_crosses_both_ways_with_translated_addresses() {
    let (mut s, spec) = seed_scenario("ping", false);
    // Nothing crosses before the network is applied.
    assert!(!ping(&s.lab, "inner-10", "192.168.3.11"));
    // That failed ARP for the gateway leaves an entry that would drop the next packet for
    // another second or so; a real host would retry, the test starts clean instead.
    s.lab
        .exec("inner-10", &["ip", "neigh", "flush", "dev", "eth0"])
        .unwrap();
    apply(&s.lab, &spec, &[]);
    tens_reach_the_other_sides_elevens(&mut s, 7001);
    // A host still reaches its own LAN neighbour directly, untouched by mirrornet.
    assert!(ping(&s.lab, "inner-10", "192.168.2.11"));
    let own = connect(&s.lab, "inner-10", "192.168.2.11:7001", None).unwrap();
    assert_eq!(
        (own.server.as_str(), host_of(&own.seen_as)),
        ("inner-11", "192.168.2.10")
    );
}

#[test]
fn tcp_crosses_both_ways_to_every_host() {
    let (mut s, spec) = seed_scenario("tcp", false);
    apply(&s.lab, &spec, &[]);
    crosses_both_ways_to_every_host(&mut s, 7002);
}

#[test]
fn identical_five_tuple_from_both_sides_uses_two_conntrack_zones() {
    let (mut s, spec) = seed_scenario("collide", false);
    let report = apply(&s.lab, &spec, &[]);
    let (zone_inner, zone_outer) = (zone_of(&report, "inner"), zone_of(&report, "outer"));
    assert_ne!(zone_inner, zone_outer);
    identical_tuples_land_in_two_zones(&mut s, (zone_inner, zone_outer), 7003, 40003);
    // `show` counts the connections each side opened, from its zone.
    let show = agent(&s.lab, &["show", "-o", "json"], &[]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    for side in ["inner", "outer"] {
        assert!(
            show[0]["connections"][side].as_u64().unwrap_or(0) >= 1,
            "{side}: {show}"
        );
    }
}

/// What mirrornet must leave alone on the middleman's unrelated `eth9`: its addresses, its
/// routes and its forwarding setting.
fn eth9_state(s: &Scenario) -> Vec<String> {
    [
        &["ip", "addr", "show", "dev", "eth9"][..],
        &["ip", "route", "show", "dev", "eth9"],
        &["sysctl", "-n", "net.ipv4.conf.eth9.forwarding"],
    ]
    .iter()
    .map(|args| s.lab.stdout(MIDDLEMAN, args).unwrap())
    .collect()
}

#[test]
fn unrelated_interface_is_unaffected() {
    let (mut s, spec) = seed_scenario("third", true);
    let before_eth9 = eth9_state(&s);
    apply(&s.lab, &spec, &[]);
    assert!(ping(&s.lab, MIDDLEMAN, "192.0.2.10"));
    assert!(ping(&s.lab, "other-10", "192.0.2.1"));
    serve(&mut s, "other-10", 7004, 0);
    // The middleman's own traffic on the unrelated interface is not translated.
    let own = connect(&s.lab, MIDDLEMAN, "192.0.2.10:7004", None).unwrap();
    assert_eq!(
        (own.server.as_str(), host_of(&own.seen_as)),
        ("other-10", "192.0.2.1")
    );
    // A host on the unrelated LAN cannot use the mirrored path.
    assert!(!ping(&s.lab, "other-10", "192.168.3.11"));
    assert!(!ping(&s.lab, "other-10", "192.168.2.11"));
    let after_eth9 = eth9_state(&s);
    assert_eq!(before_eth9, after_eth9);
}

#[test]
fn reapply_makes_zero_kernel_writes() {
    let (s, spec) = seed_scenario("reapply", false);
    let first = apply(&s.lab, &spec, &[]);
    assert!(first["writes"].as_u64().unwrap() > 0);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    for _ in 0..3 {
        let again = apply(&s.lab, &spec, &[]);
        assert_eq!(again["writes"], 0, "re-apply must write nothing: {again}");
        assert_eq!(
            again["networks"], first["networks"],
            "ids are stable across runs"
        );
    }
    assert_same(&converged, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
    // Traffic shows up per direction in `show` (the counters are not state: still in sync).
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    let show = agent(&s.lab, &["show", "-o", "json"], &[]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show[0]["name"], "plant-twin");
    assert_eq!(show[0]["in_sync"], true);
    let packets = |from: &str, to: &str| {
        show[0]["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["from"] == from && t["to"] == to)
            .and_then(|t| t["packets"].as_u64())
            .unwrap_or_else(|| panic!("no traffic entry {from} -> {to}: {show}"))
    };
    // The request entered inner for outer; the reply entered outer for inner's alias.
    assert!(packets("inner", "outer") >= 1, "{show}");
    assert!(packets("outer", "inner") >= 1, "{show}");
}

/// `mirrornet-agent show | head` must end the output, not panic: a reader that stops
/// reading closes the pipe, and every command that prints takes that as the end.
#[test]
fn a_reader_that_stops_reading_ends_the_output_not_the_command() {
    let (s, spec) = seed_scenario("epipe", false);
    apply(&s.lab, &spec, &[]);
    let bin = mirrornet_e2e::node::agent_bin();
    for args in [
        &["show"][..],
        &["show", "-o", "json"],
        &["plan", "--file", spec.path()],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        // Nobody reads: the agent's first write meets a closed pipe.
        drop(reader);
        let out = s
            .lab
            .command(MIDDLEMAN, &[bin.to_str().expect("utf-8 path")])
            .args(args)
            .stdout(writer)
            .output()
            .expect("running the agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "{args:?} into a closed pipe: {} {stderr}",
            out.status
        );
    }
    delete(&s.lab, &spec);
}

#[test]
fn delete_leaves_zero_residue() {
    let (s, spec) = seed_scenario("residue", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    apply(&s.lab, &spec, &[]);
    assert_ne!(snapshot(&s.lab, MIDDLEMAN).unwrap(), before);
    let report = delete(&s.lab, &spec);
    assert!(report["writes"].as_u64().unwrap() > 0);
    let after = snapshot(&s.lab, MIDDLEMAN).unwrap();
    assert_same(&before, &after, "delete must restore the namespace exactly");
    assert_eq!(
        delete(&s.lab, &spec)["writes"],
        0,
        "a second delete has nothing to do"
    );
    let show = agent(&s.lab, &["show", "-o", "json"], &[]);
    assert_eq!(String::from_utf8_lossy(&show.stdout).trim(), "[]");
}

/// Debian and Ubuntu nodes run loose (2), hardened ones strict (1); the kernel applies the
/// larger of `all` and the interface's value, so both must work without touching `all`.
fn reverse_path_filter_is_handled(mode: &str) {
    let (s, spec) = seed_scenario(&format!("rpf{mode}"), false);
    s.lab
        .exec(
            MIDDLEMAN,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.all.rp_filter={mode}"),
            ],
        )
        .unwrap();
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    apply(&s.lab, &spec, &[]);
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    // A VRF's own reverse lookup happens in the side's table: nothing to relax.
    for interface in ["eth1", "eth2"].into_iter().filter(|_| !vrf()) {
        let rp = s
            .lab
            .stdout(
                MIDDLEMAN,
                &[
                    "sysctl",
                    "-n",
                    &format!("net.ipv4.conf.{interface}.rp_filter"),
                ],
            )
            .unwrap();
        assert_eq!(rp.trim(), "2", "{interface} is loose");
    }
    let all = s
        .lab
        .stdout(MIDDLEMAN, &["sysctl", "-n", "net.ipv4.conf.all.rp_filter"])
        .unwrap();
    assert_eq!(all.trim(), mode, "the node-wide setting is left alone");
    assert_eq!(apply(&s.lab, &spec, &[])["writes"], 0);
    delete(&s.lab, &spec);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

#[test]
fn strict_reverse_path_filter() {
    reverse_path_filter_is_handled("1");
}

#[test]
fn loose_reverse_path_filter() {
    reverse_path_filter_is_handled("2");
}

#[test]
fn three_sides_with_distinct_aliases() {
    require_root();
    let spec = SpecFile::new("three", THREE);
    let net = spec.networks[0].valid.clone();
    let mut s = Scenario::build("three", &net, &[10, 11], false).unwrap();
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let report = apply(&s.lab, &spec, &[]);
    let zones: std::collections::BTreeSet<u64> = ["prod", "twin-a", "twin-b"]
        .iter()
        .map(|side| zone_of(&report, side))
        .collect();
    assert_eq!(zones.len(), 3);
    let sides = ["prod", "twin-a", "twin-b"];
    for side in sides {
        serve(&mut s, &format!("{side}-11"), 7005, 0);
    }
    for from in sides {
        for to in sides.iter().filter(|t| **t != from) {
            let target = format!("{}:7005", alias_of(&net, to, 11));
            let answer = connect(&s.lab, &format!("{from}-10"), &target, None)
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            assert_eq!(answer.server, format!("{to}-11"), "{from} -> {target}");
            // The server sees the client by the alias of the client's side.
            assert_eq!(
                host_of(&answer.seen_as),
                alias_of(&net, from, 10).to_string(),
                "{from} -> {to}"
            );
        }
    }
    delete(&s.lab, &spec);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

#[test]
fn ipv6_network() {
    require_root();
    let spec = SpecFile::new("ipv6", IPV6);
    let net = spec.networks[0].valid.clone();
    let mut s = Scenario::build("ipv6", &net, &[10, 11], true).unwrap();
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let report = apply(&s.lab, &spec, &[]);
    assert_ne!(zone_of(&report, "inner"), zone_of(&report, "outer"));
    // Host numbers are decimal in names, hex in IPv6 addresses: host 11 is fd00:3::b.
    tens_reach_the_other_sides_elevens(&mut s, 7006);
    // The unrelated IPv6 LAN still works.
    assert!(ping(&s.lab, "other-10", "2001:db8::1"));
    assert_eq!(apply(&s.lab, &spec, &[])["writes"], 0);
    delete(&s.lab, &spec);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

/// `trace` explains the path with the kernel's own routing answer, and `translate` names the
/// real host behind an alias.
#[test]
fn trace_and_translate_explain_the_path() {
    let (s, spec) = seed_scenario("trace", false);
    apply(&s.lab, &spec, &[]);
    let out = agent(
        &s.lab,
        &[
            "trace",
            "192.168.2.10",
            "192.168.3.11",
            "--from",
            "inner",
            "-o",
            "json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hops: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = hops.to_string();
    assert!(
        hops.as_array().unwrap().iter().all(|h| h["ok"] == true),
        "{text}"
    );
    // The kernel names the table for policy routing; with VRF the interface says it all.
    let outer_table = if vrf() { "dev eth2" } else { "table 20001" };
    for expected in [
        "steer.plant-twin.inner.outer",
        "dnat 192.168.3.11 -> 192.168.2.11",
        "dev eth2",
        outer_table,
        "snat 192.168.2.10 -> 192.168.3.10",
        "zone 40000",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    let out = agent(
        &s.lab,
        &["translate", "192.168.3.11", "--from", "inner"],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is side outer's host 192.168.2.11"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The agent reads its nft table over nfnetlink, not from `nft -j`: what it reads must be what
/// nft lists (chains, rule comments, map keys rendered as nft renders them, counters) for every
/// shape a spec gives the table: IPv4 and IPv6 prefixes, three sides, an allow-list and
/// OneWay. The zero-write re-applies elsewhere show the same reads equal the plan.
#[test]
fn the_table_read_over_nfnetlink_is_the_table_nft_lists() {
    let guarded = format!(
        "{SEED}  direction: OneWay\n  answerOnly: [outer]\n  allow:\n    - {{protocol: TCP, port: 22}}\n    - {{protocol: UDP, port: 5000, endPort: 5100}}\n    - {{protocol: ICMP}}\n"
    );
    for (tag, yaml) in [
        ("nl-seed", SEED),
        ("nl-three", THREE),
        ("nl-ipv6", IPV6),
        ("nl-guard", guarded.as_str()),
    ] {
        let (s, spec) = scenario_of(tag, yaml, false);
        let (read, listed) = nft_table_both_ways(&s.lab);
        assert!(
            !read.table_exists && !listed.table_exists,
            "{tag}: a table before apply"
        );
        apply(&s.lab, &spec, &[]);
        let pinged = alias_of(&s.network, &s.sides[1].name, 11).to_string();
        let from = format!("{}-10", s.sides[0].name);
        assert!(ping(&s.lab, &from, &pinged), "{tag}: ping {pinged}");
        let (read, listed) = nft_table_both_ways(&s.lab);
        assert!(read.table_exists, "{tag}: no table read after apply");
        assert_eq!(
            read, listed,
            "{tag}: chains, comments or map elements differ"
        );
        assert_eq!(read.counters, listed.counters, "{tag}: counters differ");
        assert!(
            read.traffic(spec.networks[0].name())
                .iter()
                .any(|t| t.packets > 0),
            "{tag}: the ping was not counted: {:?}",
            read.counters
        );
        assert_eq!(apply(&s.lab, &spec, &[])["writes"], 0, "{tag}: re-apply");
        delete(&s.lab, &spec);
        let (read, listed) = nft_table_both_ways(&s.lab);
        assert_eq!(read, listed, "{tag}: after delete");
    }
}
