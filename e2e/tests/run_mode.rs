//! `mirrornet-agent run --file F`: the long-running engine against the real kernel — drift
//! repair, interfaces that come and go, file reloads, restarts that drop no packet.

use std::time::Duration;

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    RunningAgent, SEED, SpecFile, add_network, assert_same, ping, require_root, seed_as,
    seed_scenario, snapshot, time_until, vrf,
};

fn sh(s: &Scenario, command: &str) -> String {
    s.lab
        .stdout(MIDDLEMAN, &["sh", "-c", command])
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

/// Waits until the namespace matches `expected` again.
fn converges_to(s: &Scenario, expected: &str, what: &str) {
    let ok = time_until(Duration::from_secs(5), || {
        snapshot(&s.lab, MIDDLEMAN).unwrap() == expected
    });
    if ok.is_none() {
        assert_same(expected, &snapshot(&s.lab, MIDDLEMAN).unwrap(), what);
    }
}

#[test]
fn every_tampered_object_is_repaired() {
    let (s, spec) = seed_scenario("tamper", false);
    let agent = RunningAgent::start(&s.lab, &spec, &[]);
    agent.wait_ready(&s.lab);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // (what, how to tamper, command whose output shows the object, text it must contain)
    let mut cases = vec![
        (
            "mark rule",
            "ip rule del priority 500",
            "ip rule show",
            "500:\tfrom all fwmark 0x1000000/0xff000000 lookup 20000 proto 77",
        ),
        (
            "skip rule",
            "ip rule del priority 499",
            "ip rule show",
            "499:\tfrom all fwmark 0/0xff000000 goto 1000 proto 77",
        ),
        (
            "side's own mark",
            "nft delete element inet mirrornet home '{ \"eth2\" }'",
            "nft list map inet mirrornet home",
            "\"eth2\" : jump home.plant-twin.outer",
        ),
        (
            "side route",
            "ip route del 192.168.2.0/24 table 20001",
            "ip route show table 20001",
            "192.168.2.0/24 dev eth2",
        ),
        (
            "gateway address",
            "ip addr del 192.168.2.1/24 dev eth1",
            "ip addr show dev eth1",
            "inet 192.168.2.1/24",
        ),
        (
            "nat rule",
            "nft flush chain inet mirrornet xlate-dst.plant-twin",
            "nft list chain inet mirrornet xlate-dst.plant-twin",
            "dnat ip prefix to 192.168.2.0/24",
        ),
        (
            "steering map element",
            "nft delete element inet mirrornet ingress-v4 '{ \"eth1\" . 192.168.3.0/24 }'",
            "nft list map inet mirrornet ingress-v4",
            "\"eth1\" . 192.168.3.0/24",
        ),
        (
            "whole nft table",
            "nft delete table inet mirrornet",
            "nft list tables",
            "table inet mirrornet",
        ),
        (
            "forwarding sysctl",
            "sysctl -qw net.ipv4.conf.eth1.forwarding=0",
            "sysctl net.ipv4.conf.eth1.forwarding",
            "= 1",
        ),
    ];
    if vrf() {
        // No home marks with VRF: the VRF device is the side's routing domain instead.
        cases.retain(|(what, ..)| *what != "side's own mark");
        cases.push((
            "VRF device",
            "ip link del mnv20001",
            "ip -o link show",
            "master mnv20001",
        ));
    }
    let mut delays = Vec::new();
    for (what, tamper, show, expect) in cases {
        let repairs = agent.metric(&s.lab, "mirrornet_agent_repairs_total");
        sh(&s, tamper);
        let delay = time_until(Duration::from_secs(5), || sh(&s, show).contains(expect))
            .unwrap_or_else(|| panic!("{what} was not repaired:\n{}", agent.log_text()));
        if what == "VRF device" {
            // A recreated device has a new index and address; everything else is the same.
            converges_to_stripped(&s, &identity_free(&converged), identity_free);
        } else {
            converges_to(&s, &converged, what);
        }
        assert!(ping(&s.lab, "inner-10", "192.168.3.11"), "{what}: traffic");
        assert!(agent.metric(&s.lab, "mirrornet_agent_repairs_total") > repairs);
        delays.push((what, delay));
    }
    for (what, delay) in &delays {
        println!("repair delay {what}: {:.1} ms", delay.as_secs_f64() * 1e3);
    }
}

#[test]
fn an_interface_that_appears_later_is_programmed_and_a_recreated_one_reprogrammed() {
    require_root();
    // eth3 does not exist yet.
    let text = SEED.replace("interface: eth2", "interface: eth3");
    let spec = SpecFile::new("hotplug", &text);
    let seed = SpecFile::new("hotplug-topology", SEED);
    let s = Scenario::build("hotplug", &seed.networks[0].valid, &[10, 11], false).unwrap();
    // The topology has eth2; rename it away so the spec's eth3 is missing.
    sh(&s, "ip link set eth2 down && ip link set eth2 name spare");
    let agent = RunningAgent::start(&s.lab, &spec, &[]);
    agent.wait_ready(&s.lab);
    let (_, ready) = agent.get(&s.lab, "/readyz");
    assert!(ready.contains("InterfaceMissing"), "{ready}");
    assert!(
        !sh(&s, "ip rule show").contains("proto 77"),
        "nothing programmed yet"
    );

    // Hot-plug: the interface appears under the expected name.
    sh(&s, "ip link set spare name eth3 && ip link set eth3 up");
    let delay = time_until(Duration::from_secs(5), || {
        sh(&s, "ip addr show dev eth3").contains("192.168.2.1/24")
    })
    .expect("programmed once eth3 appeared");
    println!(
        "programmed {:.1} ms after the interface appeared",
        delay.as_secs_f64() * 1e3
    );
    // Enslaving to a VRF cycles the link; the first packets may meet a link coming back up.
    for host in ["inner-10", "outer-10"] {
        assert!(
            time_until(Duration::from_secs(5), || ping(
                &s.lab,
                host,
                "192.168.3.11"
            ))
            .is_some(),
            "{host} reaches the other side"
        );
    }
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    assert!(
        time_until(Duration::from_secs(5), || {
            agent.get(&s.lab, "/readyz").1 == "ok\n"
        })
        .is_some()
    );

    // Recreated with the same name (new ifindex): the veth pair goes and comes back.
    let outer_lan = s.lab.ns("outer-lan");
    sh(&s, "ip link del eth3");
    sh(
        &s,
        &format!(
            "ip link add eth3 type veth peer name uplink netns {outer_lan} && ip link set eth3 up"
        ),
    );
    s.lab
        .exec(
            "outer-lan",
            &[
                "sh",
                "-c",
                "ip link set uplink master br0 && ip link set uplink up",
            ],
        )
        .unwrap();
    time_until(Duration::from_secs(5), || {
        sh(&s, "ip addr show dev eth3").contains("192.168.2.1/24")
    })
    .expect("re-programmed on the recreated interface");
    // The hosts still hold the old interface's MAC for the gateway; real hosts re-resolve
    // within their ARP timeout, the test does not wait for that.
    for host in ["outer-10", "outer-11"] {
        s.lab
            .exec(host, &["ip", "neigh", "flush", "dev", "eth0"])
            .unwrap();
    }
    assert!(
        time_until(Duration::from_secs(5), || ping(
            &s.lab,
            "outer-10",
            "192.168.3.11"
        ))
        .is_some()
    );
    // Same objects as before, apart from the link's own identity.
    converges_to_stripped(&s, &identity_free(&converged), identity_free);
}

/// A snapshot without what a recreated link changes by itself: its index (and so the order of
/// listings), its MAC, its IPv6 link-local address. Lines are sorted, so it compares content.
fn identity_free(snapshot: &str) -> String {
    let mut lines: Vec<String> = snapshot
        .lines()
        .filter(|l| !l.contains("link/ether") && !l.contains("fe80"))
        .map(|l| {
            let l = match l.split_once(": ") {
                Some((index, rest)) if index.chars().all(|c| c.is_ascii_digit()) => rest,
                _ => l,
            };
            match l.split_once("@if") {
                Some((name, rest)) => format!(
                    "{name}{}",
                    rest.trim_start_matches(|c: char| c.is_ascii_digit())
                ),
                None => l.to_owned(),
            }
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn converges_to_stripped(s: &Scenario, expected: &str, strip: impl Fn(&str) -> String) {
    let ok = time_until(Duration::from_secs(5), || {
        strip(&snapshot(&s.lab, MIDDLEMAN).unwrap()) == expected
    });
    if ok.is_none() {
        assert_same(
            expected,
            &strip(&snapshot(&s.lab, MIDDLEMAN).unwrap()),
            "recreated",
        );
    }
}

#[test]
fn restarting_the_agent_drops_no_packet_and_sigterm_leaves_the_datapath() {
    let (s, spec) = seed_scenario("restart", false);
    let mut agent = RunningAgent::start(&s.lab, &spec, &[]);
    agent.wait_ready(&s.lab);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // 300 pings 10 ms apart across the mirrored path while the agent is killed and restarted.
    let flood = s
        .lab
        .command(
            "inner-10",
            &["ping", "-q", "-i", "0.01", "-c", "300", "192.168.3.11"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = agent.stop("KILL");
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(300));
    agent.restart(&s.lab);
    agent.wait_ready(&s.lab);
    let out = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    println!("{}", summary.trim());
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "packets were lost across the restart: {summary}"
    );
    // /metrics reads the per-direction counters: every request and every reply counted.
    assert!(agent.metric(&s.lab, "mirrornet_agent_side_packets{") >= 600.0);
    // The restarted agent adopted the state: it wrote nothing.
    assert_eq!(
        agent.metric(&s.lab, "mirrornet_agent_kernel_writes_total"),
        0.0
    );
    assert_same(
        &converged,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after restart",
    );

    // SIGTERM: clean exit, datapath in place.
    let status = agent.stop("TERM");
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    assert_same(
        &converged,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after SIGTERM",
    );
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
}

#[test]
fn file_changes_are_followed_and_a_broken_file_changes_nothing() {
    let (s, spec) = seed_scenario("reload", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let agent = RunningAgent::start(&s.lab, &spec, &[]);
    agent.wait_ready(&s.lab);
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();

    // A broken edit: the agent logs it and keeps the network as it was.
    std::fs::write(&spec.path, SEED.replace("aliasPrefix", "aliasPrefx")).unwrap();
    assert!(
        time_until(Duration::from_secs(5), || agent
            .log_text()
            .contains("keeping the previous networks"))
        .is_some()
    );
    assert_same(
        &converged,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "broken file",
    );
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));

    // A real change: the outer side now reaches the inner side's hosts as 10.9.3.x.
    std::fs::write(
        &spec.path,
        SEED.replacen("aliasPrefix: 192.168.3.0/24", "aliasPrefix: 10.9.3.0/24", 1),
    )
    .unwrap();
    assert!(
        time_until(Duration::from_secs(5), || ping(
            &s.lab,
            "outer-10",
            "10.9.3.11"
        ))
        .is_some(),
        "{}",
        agent.log_text()
    );
    assert!(!ping(&s.lab, "outer-10", "192.168.3.11"));

    // The network leaves the file: it leaves the node, completely.
    std::fs::write(&spec.path, "# nothing here any more\n").unwrap();
    converges_to(&s, &before, "network removed from the file");
}

/// The side interface taken down (routes through it vanish with it) and brought back: the agent
/// reports it, does not fight the link state (not its to decide), and restores every object as
/// soon as the link is up again.
#[test]
fn a_side_link_going_down_is_reported_and_restored_when_up() {
    let (s, spec) = seed_scenario("linkdown", false);
    let agent = RunningAgent::start(&s.lab, &spec, &[]);
    agent.wait_ready(&s.lab);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    sh(&s, "ip link set eth2 down");
    assert!(
        time_until(Duration::from_secs(5), || {
            agent.get(&s.lab, "/readyz").1.contains("InterfaceMissing")
        })
        .is_some(),
        "the down link is reported"
    );
    assert!(
        sh(&s, "ip link show eth2").contains("state DOWN"),
        "link state left alone"
    );
    sh(&s, "ip link set eth2 up");
    converges_to(&s, &converged, "link back up");
    assert!(
        time_until(Duration::from_secs(5), || ping(
            &s.lab,
            "inner-10",
            "192.168.3.11"
        ))
        .is_some()
    );
}

/// Network `k` of [`several_networks`]: the seed renamed `net-<k>`, on eth(2k+1) and
/// eth(2k+2), subnet 10.k.2.0/24 and alias 10.k.3.0/24.
fn numbered_seed(k: u32) -> String {
    let interfaces = [format!("eth{}", 2 * k + 1), format!("eth{}", 2 * k + 2)];
    seed_as(
        &format!("net-{k}"),
        [&interfaces[0], &interfaces[1]],
        &format!("10.{k}"),
    )
}

/// The passes `/metrics` counts for `cause` over the whole node or over some networks.
fn passes(agent: &RunningAgent, s: &Scenario, cause: &str, scope: &str) -> f64 {
    agent.metric(
        &s.lab,
        &format!("mirrornet_agent_reconcile_passes_total{{cause=\"{cause}\",scope=\"{scope}\"}}"),
    )
}

/// A node holding the seed and three more networks, each tampered with in turn: every repair
/// is a pass over the tampered network alone (the others are neither planned nor diffed), and
/// a change to something no network owns runs no pass at all.
#[test]
fn a_tampered_network_among_several_is_repaired_alone() {
    let seed = SpecFile::new("several-seed", SEED);
    let mut s = Scenario::build("several", &seed.networks[0].valid, &[10, 11], false).unwrap();
    let mut yaml = SEED.to_owned();
    for k in 1..=3 {
        let text = numbered_seed(k);
        let network = SpecFile::new(&format!("several-{k}"), &text).networks[0]
            .valid
            .clone();
        add_network(&mut s.lab, &network, &format!("n{k}"), &[]);
        yaml.push_str("---\n");
        yaml.push_str(&text);
    }
    let spec = SpecFile::new("several", &yaml);
    assert_eq!(spec.networks.len(), 4);
    // No resync while it runs: every full pass here would be one an event caused.
    let agent = RunningAgent::start(&s.lab, &spec, &["--resync-seconds", "3600"]);
    agent.wait_ready(&s.lab);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // net-2 is on eth5 and eth6.
    let route = sh(&s, "ip route show table all | grep '^10.2.2.0/24 dev eth6'");
    let route = route
        .lines()
        .next()
        .expect("net-2's route of side outer")
        .to_owned();
    let cases = [
        ("route", format!("ip route del {route}")),
        ("address", "ip addr del 10.2.2.1/24 dev eth5".to_owned()),
        (
            "nat chain",
            "nft flush chain inet mirrornet xlate-dst.net-2".to_owned(),
        ),
        (
            "steering element",
            "nft delete element inet mirrornet ingress-v4 '{ \"eth5\" . 10.2.3.0/24 }'".to_owned(),
        ),
        (
            "forwarding sysctl",
            "sysctl -qw net.ipv4.conf.eth6.forwarding=0".to_owned(),
        ),
    ];
    for (what, tamper) in &cases {
        let (node, scoped) = (
            passes(&agent, &s, "Drift", "Node"),
            passes(&agent, &s, "Drift", "Networks"),
        );
        let repairs = agent.metric(&s.lab, "mirrornet_agent_repairs_total");
        sh(&s, tamper);
        let repaired = time_until(Duration::from_secs(20), || {
            snapshot(&s.lab, MIDDLEMAN).unwrap() == converged
        });
        if repaired.is_none() {
            assert_same(&converged, &snapshot(&s.lab, MIDDLEMAN).unwrap(), what);
        }
        assert!(
            agent.metric(&s.lab, "mirrornet_agent_repairs_total") > repairs,
            "{what}: counted as a repair"
        );
        assert!(
            passes(&agent, &s, "Drift", "Networks") > scoped,
            "{what}: repaired by a pass over its network"
        );
        assert_eq!(
            passes(&agent, &s, "Drift", "Node"),
            node,
            "{what}: no pass over the whole node\n{}",
            agent.log_text()
        );
        assert_eq!(
            agent.metric(&s.lab, "mirrornet_agent_last_pass_networks"),
            1.0,
            "{what}: the last pass converged net-2 alone"
        );
    }
    assert!(
        ping(&s.lab, "inner-10", "192.168.3.11"),
        "the seed still crosses"
    );
    // One network edited in the file, then removed from it: each time a pass over that
    // network alone, which leaves the others as they were.
    for (what, text) in [
        (
            "net-3 suspended",
            yaml.replace(
                "name: net-3\nspec:\n",
                "name: net-3\nspec:\n  suspend: true\n",
            ),
        ),
        (
            "net-3 removed",
            yaml.split("---\n")
                .filter(|d| !d.contains("name: net-3"))
                .collect::<Vec<_>>()
                .join("---\n"),
        ),
    ] {
        assert_ne!(text, yaml, "{what}: the edit applies");
        let scoped = passes(&agent, &s, "Spec", "Networks");
        let node = passes(&agent, &s, "Spec", "Node");
        let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
        std::fs::write(&spec.path, &text).unwrap();
        let followed = time_until(Duration::from_secs(20), || {
            passes(&agent, &s, "Spec", "Networks") > scoped
                && snapshot(&s.lab, MIDDLEMAN).unwrap() != before
        });
        assert!(
            followed.is_some(),
            "{what}: not followed\n{}",
            agent.log_text()
        );
        assert_eq!(passes(&agent, &s, "Spec", "Node"), node, "{what}");
        assert_eq!(
            agent.metric(&s.lab, "mirrornet_agent_last_pass_networks"),
            1.0,
            "{what}: the last pass converged net-3 alone"
        );
        assert!(ping(&s.lab, "inner-10", "192.168.3.11"), "{what}: the seed");
    }
    // Nobody's link comes and goes: no pass of any kind follows.
    let drift = passes(&agent, &s, "Drift", "Node") + passes(&agent, &s, "Drift", "Networks");
    sh(
        &s,
        "ip link add mnx-a type veth peer name mnx-b && ip link set mnx-a up && ip link del mnx-a",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        passes(&agent, &s, "Drift", "Node") + passes(&agent, &s, "Drift", "Networks"),
        drift,
        "a link no network owns runs no pass"
    );
}
