//! What a user trusting the agent with a node's routing needs to hold: other software's objects
//! survive, bad input changes nothing, a failed apply rolls back to exactly the state before,
//! spec changes converge without leftovers.

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_api::file::load_str;
use mirrornet_e2e::node::{
    SEED, SpecFile, add_network, agent, apply, assert_same, connect, connect_within, delete,
    host_of, ping, planned_steps, require_root, second_seed, seed_scenario, serve, snapshot, vrf,
};

fn nft(s: &Scenario, script: &str) {
    s.lab.exec(MIDDLEMAN, &["nft", script]).unwrap();
}

fn counter_packets(s: &Scenario, family_table: &[&str], name: &str) -> u64 {
    let mut args = vec!["nft", "-j", "list", "counter"];
    args.extend(family_table);
    args.push(name);
    let out = s.lab.stdout(MIDDLEMAN, &args).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["counter"]["packets"].as_u64())
        .unwrap()
}

#[test]
fn foreign_tables_rules_and_marks_survive() {
    let (s, spec) = seed_scenario("foreign", false);
    // Another program's nft table: it marks every packet with low bits 0x42 before mirrornet
    // sees it, and counts forwarded packets that still carry them.
    nft(&s, "add table ip foreign");
    nft(
        &s,
        "add chain ip foreign pre { type filter hook prerouting priority -350; policy accept; }",
    );
    nft(
        &s,
        "add rule ip foreign pre meta mark set meta mark or 0x42",
    );
    nft(&s, "add counter ip foreign kept");
    nft(
        &s,
        "add chain ip foreign post { type filter hook postrouting priority 300; policy accept; }",
    );
    nft(
        &s,
        "add rule ip foreign post meta mark and 0xff == 0x42 ip daddr 192.168.2.0/24 counter name kept",
    );
    // Another program's routing: rules, and a table id inside mirrornet's default range.
    for cmd in [
        "ip rule add priority 200 from 198.51.100.0/24 lookup 100",
        "ip route add unreachable 198.51.100.0/24 table 100",
        "ip rule add priority 32000 fwmark 0x42/0xff lookup 20000",
        "ip route add unreachable 203.0.113.0/24 table 20000",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        s.lab.exec(MIDDLEMAN, &args).unwrap();
    }
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();

    let report = apply(&s.lab, &spec, &[]);
    let tables: Vec<u64> = report["networks"][0]["allocation"]["sides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|side| side["table"].as_u64().unwrap())
        .collect();
    assert!(
        !tables.contains(&20000) && !tables.contains(&100),
        "tables in use by others are never allocated: {tables:?}"
    );
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    assert!(
        counter_packets(&s, &["ip", "foreign"], "kept") >= 4,
        "the foreign mark bits survive mirrornet's marking"
    );
    let applied = snapshot(&s.lab, MIDDLEMAN).unwrap();
    assert!(applied.contains(r#"{"table":{"family":"ip","name":"foreign"}}"#));
    assert!(applied.contains("200:\tfrom 198.51.100.0/24 lookup 100"));

    delete(&s.lab, &spec);
    let after = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // Counters moved; everything else is exactly as before.
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.contains("counter") && !l.contains("packets"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&before), strip(&after));
}

#[test]
fn invalid_files_are_rejected_naming_the_field_and_change_nothing() {
    let (s, _spec) = seed_scenario("invalid", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no # expect: line", path.display()));
        let file = SpecFile::raw("invalid", &text, Vec::new());
        for command in ["apply", "delete"] {
            let out = agent(&s.lab, &[command, "--file", file.path()], &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{command} {} succeeded",
                path.display()
            );
            assert!(
                stderr.contains(expect),
                "{command} {}: expected {expect:?} in {stderr:?}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 5);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

#[test]
fn a_missing_interface_or_a_foreign_address_is_refused_before_any_write() {
    let (s, _) = seed_scenario("refuse", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let missing = SpecFile::new(
        "missing",
        &SEED.replace("interface: eth2", "interface: eth7"),
    );
    let out = agent(&s.lab, &["apply", "--file", missing.path()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.sides[1].interface") && stderr.contains("eth7"),
        "{stderr}"
    );
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");

    // An address someone else configured is not taken over.
    s.lab
        .exec(
            MIDDLEMAN,
            &["ip", "addr", "add", "192.168.2.1/24", "dev", "eth1"],
        )
        .unwrap();
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let seed = SpecFile::new("taken", SEED);
    let out = agent(&s.lab, &["apply", "--file", seed.path()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("eth1 already holds 192.168.2.1"),
        "{stderr}"
    );
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

/// Number of steps the agent would take for `spec` now.

#[test]
fn a_failure_at_any_step_of_an_apply_rolls_back_to_the_state_before() {
    let (s, spec) = seed_scenario("rollback", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let steps = planned_steps(&s.lab, &spec);
    assert!(steps > 5);
    assert_eq!(
        snapshot(&s.lab, MIDDLEMAN).unwrap(),
        before,
        "plan changes nothing"
    );
    for fault in 0..steps {
        let at = fault.to_string();
        let out = agent(
            &s.lab,
            &["apply", "--file", spec.path()],
            &[("MIRRORNET_FAULT_AT_STEP", &at)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "fault at step {fault} must fail the apply"
        );
        assert!(
            stderr.contains(&format!("rolled back the {fault} change(s)")),
            "{stderr}"
        );
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("fault at step {fault}"),
        );
    }
    // And without a fault the same apply converges.
    apply(&s.lab, &spec, &[]);
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
}

/// `snapshot` without the identity of mirrornet's VRF devices (ifindex, MAC, place in the
/// listing): a VRF device that a rollback has to re-create is the same routing domain under a
/// new identity, which no program can keep.
fn vrf_identity_free(snapshot: String) -> String {
    let mut out = String::new();
    let mut vrf_blocks: Vec<String> = Vec::new();
    let mut in_vrf = false;
    let flush = |out: &mut String, blocks: &mut Vec<String>| {
        blocks.sort();
        for b in blocks.drain(..) {
            out.push_str(&b);
        }
    };
    for line in snapshot.lines() {
        let header = line
            .split_once(": ")
            .filter(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
        if line.starts_with("### ") {
            flush(&mut out, &mut vrf_blocks);
            in_vrf = false;
        }
        match header {
            Some((_, rest)) if rest.starts_with("mnv") => {
                in_vrf = true;
                vrf_blocks.push(format!("{rest}\n"));
                continue;
            }
            Some(_) => in_vrf = false,
            None => {}
        }
        if in_vrf {
            let text = if line.trim_start().starts_with("link/ether") {
                "    link/ether (re-created VRF device)"
            } else {
                line
            };
            if let Some(block) = vrf_blocks.last_mut() {
                block.push_str(text);
                block.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &mut vrf_blocks);
    out
}

#[test]
fn a_failed_change_or_delete_returns_to_the_applied_state() {
    let (s, spec) = seed_scenario("rollback-change", false);
    apply(&s.lab, &spec, &[]);
    let snapshot = |lab, ns| snapshot(lab, ns).map(vrf_identity_free);
    let applied = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // A changed alias: new map elements, stale ones removed after the nft transaction.
    let changed = SpecFile::new(
        "changed",
        &SEED.replace("aliasPrefix: 192.168.3.0/24", "aliasPrefix: 10.99.3.0/24"),
    );
    let change_steps = planned_steps(&s.lab, &changed);
    let delete_steps = {
        let out = agent(
            &s.lab,
            &["delete", "--file", spec.path(), "-o", "json"],
            &[],
        );
        // Undo that real delete right away; it only measured the step count.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        apply(&s.lab, &spec, &[]);
        v["steps"].as_array().unwrap().len()
    };
    assert_same(&applied, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
    for (file, steps) in [(&changed, change_steps), (&spec, delete_steps)] {
        let command = if std::ptr::eq(file, &spec) {
            "delete"
        } else {
            "apply"
        };
        for fault in 1..steps {
            let at = fault.to_string();
            let out = agent(
                &s.lab,
                &[command, "--file", file.path()],
                &[("MIRRORNET_FAULT_AT_STEP", &at)],
            );
            assert!(!out.status.success());
            assert_same(
                &applied,
                &snapshot(&s.lab, MIDDLEMAN).unwrap(),
                &format!(
                    "{command}, fault at step {fault}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
    }
    assert!(
        ping(&s.lab, "inner-10", "192.168.3.11"),
        "the datapath still works"
    );
}

#[test]
fn a_changed_spec_converges_without_leftovers() {
    let (mut s, spec) = seed_scenario("change", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    apply(&s.lab, &spec, &[]);
    serve(&mut s, "outer-11", 7010, 0);
    serve(&mut s, "inner-11", 7010, 0);
    assert_eq!(
        connect(&s.lab, "inner-10", "192.168.3.11:7010", None)
            .unwrap()
            .server,
        "outer-11"
    );
    // Each side gets its own alias now; the old alias must stop working.
    let changed_text = SEED.replacen("aliasPrefix: 192.168.3.0/24", "aliasPrefix: 10.1.3.0/24", 1);
    let changed = SpecFile::new("changed", &changed_text);
    let report = apply(&s.lab, &changed, &[]);
    assert!(report["writes"].as_u64().unwrap() > 0);
    let a = connect(&s.lab, "outer-10", "10.1.3.11:7010", None).unwrap();
    assert_eq!(
        (a.server.as_str(), host_of(&a.seen_as)),
        ("inner-11", "192.168.3.10")
    );
    let b = connect(&s.lab, "inner-10", "192.168.3.11:7010", None).unwrap();
    assert_eq!(
        (b.server.as_str(), host_of(&b.seen_as)),
        ("outer-11", "10.1.3.10")
    );
    assert!(
        !ping(&s.lab, "outer-10", "192.168.3.11"),
        "the old alias is gone"
    );
    assert_eq!(apply(&s.lab, &changed, &[])["writes"], 0);
    delete(&s.lab, &changed);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

#[test]
fn two_networks_on_one_node_are_independent() {
    require_root();
    let first = SpecFile::new("two-a", SEED);
    let second_text = second_seed();
    let second = SpecFile::new("two-b", &second_text);
    let valid_a = load_str("a", SEED).unwrap()[0].valid.clone();
    let valid_b = second.networks[0].valid.clone();
    // One middleman holding both networks' interfaces: build the second network's LANs on the
    // first lab's middleman by building both and joining them through the same namespace.
    let mut s = Scenario::build("two", &valid_a, &[10, 11], false).unwrap();
    add_network(&mut s.lab, &valid_b, "b", &[10]);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let a = apply(&s.lab, &first, &[]);
    let b = apply(&s.lab, &second, &[]);
    let ids = |r: &serde_json::Value| r["networks"][0]["allocation"]["sides"].clone();
    let (ia, ib) = (ids(&a), ids(&b));
    for side_a in ia.as_array().unwrap() {
        for side_b in ib.as_array().unwrap() {
            // Rule priorities may be shared (`ids.rs`); the rest never.
            for key in ["table", "mark", "zone"] {
                assert_ne!(side_a[key], side_b[key], "{key} shared between networks");
            }
        }
    }
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "b-inner-10", "172.16.3.10"));
    // Removing one leaves the other working and untouched.
    delete(&s.lab, &first);
    assert!(ping(&s.lab, "b-inner-10", "172.16.3.10"));
    assert!(!ping(&s.lab, "inner-10", "192.168.3.11"));
    assert_eq!(apply(&s.lab, &second, &[])["writes"], 0);
    delete(&s.lab, &second);
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "after");
}

/// A second network that wants what the first holds is refused with the reason, changes
/// nothing, and the first keeps forwarding during the attempt.
#[test]
fn conflicting_networks_are_refused_and_the_first_keeps_forwarding() {
    let (s, spec) = seed_scenario("conflict", false);
    apply(&s.lab, &spec, &[]);
    let applied = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // Interfaces for the later cases: a veth pair inside the middleman, one end in a bridge.
    for cmd in [
        "ip link add eth5 type veth peer name eth6",
        "ip link add br5 type bridge",
        "ip link set eth5 master br5",
        "ip link set eth5 up",
        "ip link set eth6 up",
        "ip link set br5 up",
        "ip rule add priority 300 fwmark 0x7 lookup 4242",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        s.lab.exec(MIDDLEMAN, &args).unwrap();
    }
    // The bridge's own settling (carrier, link-local address, timers) is not ours to compare.
    // Under a slow (emulated) CPU the operational state follows the address by a while.
    let settled = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        s.lab
            .stdout(MIDDLEMAN, &["ip", "-6", "addr", "show", "dev", "br5"])
            .unwrap()
            .contains("fe80")
            && s.lab
                .stdout(MIDDLEMAN, &["ip", "link", "show", "dev", "br5"])
                .unwrap()
                .contains("state UP")
    });
    assert!(settled, "br5 came up");
    let steady = |snapshot: String| {
        snapshot
            .lines()
            .filter(|l| !l.contains("timer"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let applied_plus = steady(snapshot(&s.lab, MIDDLEMAN).unwrap());
    let other = |replacements: &[(&str, &str)]| {
        let mut text = SEED.replace("name: plant-twin", "name: intruder");
        for (from, to) in replacements {
            text = text.replace(from, to);
        }
        SpecFile::new("intruder", &text)
    };
    let cases = [
        (
            "the same interface",
            other(&[("192.168.2.", "10.77.2."), ("192.168.3.", "10.77.3.")]),
            "interface eth1 is already used by network plant-twin",
        ),
        (
            "an interface enslaved to a bridge",
            other(&[("eth1", "eth5"), ("eth2", "eth6")]),
            "is enslaved to \"br5\"",
        ),
        (
            "a table another program routes with",
            other(&[("eth1", "eth5"), ("eth2", "eth6")]).with_text(|t| {
                t.replacen(
                    "interface: eth6",
                    "interface: eth6\n      kernelIds: {table: 4242}",
                    1,
                )
            }),
            "4242",
        ),
    ];
    for (what, intruder, reason) in cases {
        // Traffic of the first network throughout the attempt.
        let flood = s
            .lab
            .command(
                "inner-10",
                &["ping", "-q", "-i", "0.01", "-c", "100", "192.168.3.11"],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = agent(&s.lab, &["apply", "--file", intruder.path()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary =
            String::from_utf8_lossy(&flood.wait_with_output().unwrap().stdout).into_owned();
        assert!(!out.status.success(), "{what}: the intruder was accepted");
        assert!(
            stderr.contains(reason),
            "{what}: expected {reason:?} in {stderr}"
        );
        assert!(
            summary.contains("100 packets transmitted, 100 received"),
            "{what}: the first network dropped packets during the attempt: {summary}"
        );
        assert_same(
            &applied_plus,
            &steady(snapshot(&s.lab, MIDDLEMAN).unwrap()),
            what,
        );
    }
    assert_ne!(steady(applied), applied_plus);
}

/// The interface the node itself uses (its default route, its own addresses) is refused unless
/// the side opts in; the refusal says why and how to opt in.
#[test]
fn the_nodes_own_interfaces_are_protected_unless_the_spec_opts_in() {
    let (s, spec) = seed_scenario("protect", false);
    // The node's own uplink: an address and the default route on eth2. (With no address of
    // its own, removing mirrornet's would be the interface's last IPv4 address, and the kernel
    // flushes every route through an interface that loses its last address.)
    for cmd in [
        "ip addr add 198.51.100.2/24 dev eth2",
        "ip route add default via 198.51.100.1 dev eth2",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        s.lab.exec(MIDDLEMAN, &args).unwrap();
    }
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let out = agent(&s.lab, &["apply", "--file", spec.path()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.sides[1].interface")
            && stderr.contains("carries the node's default route")
            && stderr.contains("takeOverNodeInterface"),
        "{stderr}"
    );
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "refused");

    let opted_in = SpecFile::new(
        "protect-optin",
        &SEED.replace(
            "interface: eth2",
            "interface: eth2\n      takeOverNodeInterface: true",
        ),
    );
    if vrf() {
        // Enslaving the uplink to a VRF would take the node's default route out of the main
        // table, and releasing it would not bring it back: refused even when opted in.
        let out = agent(&s.lab, &["apply", "--file", opted_in.path()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("spec.sides[1].interface")
                && stderr.contains("enslaving it to a VRF device would take that route"),
            "{stderr}"
        );
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            "opted in under VRF: refused",
        );
    } else {
        // Policy routing leaves the node's own lookups alone: the take-over is kept.
        apply(&s.lab, &opted_in, &[]);
        assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
        delete(&s.lab, &opted_in);
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            "opted in, then deleted",
        );
    }

    // An address the node uses on a side interface is node traffic too.
    s.lab
        .exec(
            MIDDLEMAN,
            &["ip", "addr", "add", "203.0.113.7/24", "dev", "eth1"],
        )
        .unwrap();
    let out = agent(&s.lab, &["apply", "--file", opted_in.path()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.sides[0].interface") && stderr.contains("203.0.113.7/24"),
        "{stderr}"
    );
}

/// `direction: OneWay`: the answer-only side cannot open a connection (refused at its first
/// packet), yet answers every connection the other side opens.
#[test]
fn one_way_refuses_initiation_and_allows_replies() {
    let (mut s, _) = seed_scenario("oneway", false);
    let spec = SpecFile::new(
        "oneway",
        &format!("{SEED}  direction: OneWay\n  answerOnly: [outer]\n"),
    );
    apply(&s.lab, &spec, &[]);
    serve(&mut s, "outer-11", 7020, 0);
    serve(&mut s, "inner-11", 7020, 0);
    // inner may initiate: the connection opens and outer's answer comes back.
    let answer = connect(&s.lab, "inner-10", "192.168.3.11:7020", None).unwrap();
    assert_eq!(answer.server, "outer-11");
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    // outer may not: its first packet is dropped, the connection never opens.
    let refused = connect(&s.lab, "outer-10", "192.168.3.11:7020", None);
    assert!(refused.is_err(), "outer opened a connection: {refused:?}");
    assert!(!ping(&s.lab, "outer-10", "192.168.3.11"));
    // Back to Both: outer may initiate again.
    apply(&s.lab, &SpecFile::new("both", SEED), &[]);
    assert_eq!(
        connect(&s.lab, "outer-10", "192.168.3.11:7020", None)
            .unwrap()
            .server,
        "inner-11"
    );
}

/// Long enough for a connection across the middleman in a namespace lab to open; a dropped
/// first packet never opens one.
const REFUSED_WITHIN: std::time::Duration = std::time::Duration::from_millis(1000);

/// `spec.allow`: a side opens only the connections the list names (TCP 7030, a UDP range,
/// ping), every reply passes, and the network without the list opens everything again.
#[test]
fn an_allow_list_opens_only_what_it_names_and_replies_pass() {
    let (mut s, _) = seed_scenario("allow", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let allow = "  allow:\n    - {protocol: TCP, port: 7030}\n    - {protocol: UDP, port: 5000, endPort: 5100}\n    - {protocol: ICMP}\n";
    let allowed = SpecFile::new("allow", &format!("{SEED}{allow}"));
    apply(&s.lab, &allowed, &[]);
    for host in ["outer-11", "inner-11"] {
        serve(&mut s, host, 7030, 0);
        serve(&mut s, host, 7031, 0);
    }
    // Named: opens both ways, and the server's answer (a reply to an unnamed client port)
    // comes back.
    let a = connect(&s.lab, "inner-10", "192.168.3.11:7030", None).unwrap();
    assert_eq!(
        (a.server.as_str(), host_of(&a.seen_as)),
        ("outer-11", "192.168.3.10")
    );
    let b = connect(&s.lab, "outer-10", "192.168.3.11:7030", None).unwrap();
    assert_eq!(b.server, "inner-11");
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    // Not named: the first packet is dropped, the connection never opens.
    for from in ["inner-10", "outer-10"] {
        let refused = connect_within(&s.lab, from, "192.168.3.11:7031", None, REFUSED_WITHIN);
        assert!(refused.is_err(), "{from} opened TCP 7031: {refused:?}");
    }
    let chain = s
        .lab
        .stdout(
            MIDDLEMAN,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "mirrornet",
                "xlate-dst.plant-twin",
            ],
        )
        .unwrap();
    assert!(
        chain.contains("tcp . 7030") && chain.contains("udp . 5000-5100"),
        "{chain}"
    );
    assert_eq!(apply(&s.lab, &allowed, &[])["writes"], 0);
    // `trace` tells which of the two a new connection is.
    for (flow, verdict) in [
        ("tcp/7030", "TCP/7030 is allowed"),
        (
            "tcp/7031",
            "TCP/7031 is not in TCP/7030, UDP/5000-5100, ICMP",
        ),
    ] {
        let out = agent(
            &s.lab,
            &[
                "trace",
                "192.168.2.10",
                "192.168.3.11",
                flow,
                "--from",
                "inner",
            ],
            &[],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(verdict), "{text}");
    }

    // With OneWay, the answer-only drop comes first: what the list names stays refused to
    // the side that may only answer.
    let one_way = SpecFile::new(
        "allow-oneway",
        &format!("{SEED}  direction: OneWay\n  answerOnly: [outer]\n{allow}"),
    );
    apply(&s.lab, &one_way, &[]);
    assert_eq!(
        connect(&s.lab, "inner-10", "192.168.3.11:7030", None)
            .unwrap()
            .server,
        "outer-11"
    );
    let refused = connect_within(
        &s.lab,
        "outer-10",
        "192.168.3.11:7030",
        None,
        REFUSED_WITHIN,
    );
    assert!(refused.is_err(), "outer opened TCP 7030: {refused:?}");

    // Without the list, every port opens again.
    let open = SpecFile::new("allow-open", SEED);
    assert!(apply(&s.lab, &open, &[])["writes"].as_u64().unwrap() > 0);
    assert_eq!(
        connect(&s.lab, "inner-10", "192.168.3.11:7031", None)
            .unwrap()
            .server,
        "outer-11"
    );
    assert_eq!(apply(&s.lab, &open, &[])["writes"], 0);
    delete(&s.lab, &open);
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after delete",
    );
}

/// A snapshot without its nft section, which a suspended network changes on purpose (its ids
/// stay in mirrornet's table).
fn without_nft(snapshot: &str) -> String {
    let (head, rest) = snapshot
        .split_once("### nft -j list ruleset")
        .expect("snapshot has an nft section");
    let (_, tail) = rest
        .split_once("### sysctls")
        .expect("snapshot has a sysctl section");
    format!("{head}### sysctls{tail}")
}

/// mirrornet's table as (chain names, map names -> element count).
fn our_table(s: &Scenario) -> (Vec<String>, Vec<(String, usize)>) {
    let out = s
        .lab
        .stdout(
            MIDDLEMAN,
            &["nft", "-j", "list", "table", "inet", "mirrornet"],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let items = v["nftables"].as_array().unwrap();
    let mut chains: Vec<String> = items
        .iter()
        .filter_map(|i| i["chain"]["name"].as_str().map(str::to_owned))
        .collect();
    chains.sort();
    let maps = items
        .iter()
        .filter_map(|i| {
            let map = i.get("map")?;
            let elements = map["elem"].as_array().map_or(0, Vec::len);
            Some((map["name"].as_str()?.to_owned(), elements))
        })
        .collect();
    (chains, maps)
}

fn shown(s: &Scenario) -> serde_json::Value {
    let out = agent(&s.lab, &["show", "-o", "json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "plant-twin")
        .cloned()
        .unwrap_or_else(|| panic!("show lists plant-twin: {v}"))
}

/// `spec.suspend`: the node gives back everything the network took (addresses, routes,
/// rules, sysctls, steering and NAT) and keeps only its ids, so that resuming brings back the
/// very same datapath.
#[test]
fn a_suspended_network_withdraws_its_datapath_and_keeps_its_ids() {
    let (s, spec) = seed_scenario("suspend", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let running = apply(&s.lab, &spec, &[]);
    let ids = running["networks"][0]["allocation"].clone();
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));

    let suspended = SpecFile::new("suspended", &format!("{SEED}  suspend: true\n"));
    let report = apply(&s.lab, &suspended, &[]);
    assert_eq!(report["networks"][0]["allocation"], ids);
    assert!(!ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(!ping(&s.lab, "outer-10", "192.168.3.11"));
    let at_rest = snapshot(&s.lab, MIDDLEMAN).unwrap();
    assert_same(&without_nft(&before), &without_nft(&at_rest), "suspended");
    let (chains, maps) = our_table(&s);
    assert_eq!(
        chains,
        [
            "ids.plant-twin",
            "nat-postrouting",
            "nat-prerouting",
            "prerouting"
        ],
        "only the skeleton and the ids stay"
    );
    assert!(maps.iter().all(|(_, n)| *n == 0), "maps left: {maps:?}");
    let network = shown(&s);
    assert_eq!(network["suspended"], true);
    assert_eq!(network["in_sync"], true);
    assert!(
        network["summary"].as_str().unwrap().contains("suspended"),
        "{network}"
    );
    assert_eq!(network["allocation"], ids);
    assert_eq!(apply(&s.lab, &suspended, &[])["writes"], 0);

    // Resumed: the same ids, traffic crosses again.
    let resumed = apply(&s.lab, &spec, &[]);
    assert_eq!(resumed["networks"][0]["allocation"], ids);
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    assert_eq!(shown(&s)["suspended"], false);
    delete(&s.lab, &spec);
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after delete",
    );

    // Suspended from the start, then deleted: the ids alone come and go without residue.
    apply(&s.lab, &suspended, &[]);
    assert_same(
        &without_nft(&before),
        &without_nft(&snapshot(&s.lab, MIDDLEMAN).unwrap()),
        "suspended from the start",
    );
    delete(&s.lab, &suspended);
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after deleting a suspended network",
    );

    // A suspended network needs none of its interfaces: one that does not exist is no error.
    let elsewhere = SpecFile::new(
        "suspended-elsewhere",
        &format!(
            "{SEED}  suspend: true
"
        )
        .replace("interface: eth2", "interface: eth7"),
    );
    apply(&s.lab, &elsewhere, &[]);
    assert_eq!(shown(&s)["suspended"], true);
    delete(&s.lab, &elsewhere);
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after deleting a suspended network on a missing interface",
    );
}
