//! On-link aliases (`spec.hostPrefix`) against the real kernel: hosts with an address and
//! nothing else (no route, no gateway) reach their twins at addresses inside their own
//! subnet, because the middleman answers ARP and neighbour solicitations for exactly the
//! alias addresses, and never for one a host already uses. Backend from the suite
//! (`MIRRORNET_E2E_BACKEND`): policy routing here, VRF inside a VM (`tests/vm_vrf.rs`).

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    SpecFile, agent, alias_of, apply, connect, connect_within, delete,
    identical_tuples_land_in_two_zones, ping, scenario_of, snapshot,
    tens_reach_the_other_sides_elevens, zone_of,
};

const ON_LINK: &str = include_str!("../../examples/on-link.yaml");

/// The on-link example in IPv6: hosts in fd00:2::/121, each side's twins in fd00:2::80/121.
fn ipv6() -> String {
    ON_LINK
        .replace("192.168.2.0/24", "fd00:2::/120")
        .replace("192.168.2.0/26", "fd00:2::/122")
        .replace("192.168.2.254", "fd00:2::fe")
        .replace("192.168.2.128/26", "fd00:2::80/122")
}

/// The proxy entries the middleman holds: `ip neigh show proxy`, one per line.
fn proxies(s: &Scenario) -> Vec<String> {
    let out = s
        .lab
        .stdout(MIDDLEMAN, &["ip", "neigh", "show", "proxy"])
        .unwrap();
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.extend(
        s.lab
            .stdout(MIDDLEMAN, &["ip", "-6", "neigh", "show", "proxy"])
            .unwrap()
            .lines()
            .map(str::to_owned),
    );
    lines.sort();
    lines.dedup();
    lines
}

/// `ip neigh <verb> proxy <address> dev <interface>` on the middleman, by hand.
fn proxy_entry(s: &Scenario, verb: &str, address: &str, interface: &str) {
    s.lab
        .exec(
            MIDDLEMAN,
            &["ip", "neigh", verb, "proxy", address, "dev", interface],
        )
        .unwrap();
}

/// The link-layer address host `ns` holds for `address` (after reaching for it).
fn neighbour_mac(s: &Scenario, ns: &str, address: &str) -> Option<String> {
    let out = s
        .lab
        .stdout(ns, &["ip", "neigh", "show", address, "dev", "eth0"])
        .unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "lladdr")?;
    words.get(at + 1).map(|w| (*w).to_owned())
}

fn mac_of(s: &Scenario, ns: &str, interface: &str) -> String {
    s.lab
        .stdout(ns, &["cat", &format!("/sys/class/net/{interface}/address")])
        .unwrap()
        .trim()
        .to_owned()
}

fn untouched_hosts_reach_their_twins(tag: &str, yaml: &str, port: u16) {
    let (mut s, spec) = scenario_of(tag, yaml, false);
    let net = s.network.clone();
    assert!(net.on_link());
    // The hosts hold an address and nothing else.
    for host in ["inner-10", "outer-11"] {
        let family = if net.is_ipv6() { "-6" } else { "-4" };
        let routes = s
            .lab
            .stdout(host, &["ip", family, "route", "show"])
            .unwrap();
        assert!(
            !routes.contains("via") && !routes.contains("default"),
            "{host} has a route: {routes}"
        );
    }
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let report = apply(&s.lab, &spec, &[]);
    // Every alias address of the other side, on each side (none is taken).
    let held = proxies(&s);
    // .128 stands for the subnet's network address, no host.
    assert_eq!(held.len(), 2 * 63, "{held:#?}");
    assert!(held.iter().all(|l| l.contains("proto 77")), "{held:#?}");
    tens_reach_the_other_sides_elevens(&mut s, port);
    // The answer came from the middleman: the host resolved the alias to its interface.
    let alias = alias_of(&net, "outer", 11).to_string();
    assert_eq!(
        neighbour_mac(&s, "inner-10", &alias),
        Some(mac_of(&s, MIDDLEMAN, "eth1")),
        "inner-10 resolves {alias} to the middleman"
    );
    // A host's own LAN stays its own: .11 is inner-11, reached directly.
    let own = mirrornet_agent::lab::nth(net.hosts, 11).to_string();
    assert!(ping(&s.lab, "inner-10", &own));
    assert_eq!(
        neighbour_mac(&s, "inner-10", &own),
        Some(mac_of(&s, "inner-11", "eth0"))
    );
    let (zone_inner, zone_outer) = (zone_of(&report, "inner"), zone_of(&report, "outer"));
    identical_tuples_land_in_two_zones(&mut s, (zone_inner, zone_outer), port + 1, port + 2);
    // Converged: nothing to do again.
    let again = apply(&s.lab, &spec, &[]);
    assert_eq!(again["writes"], 0, "{again}");
    // A proxy entry deleted by hand is put back.
    let victim = alias_of(&net, "inner", 10).to_string();
    proxy_entry(&s, "del", &victim, "eth2");
    let repaired = apply(&s.lab, &spec, &[]);
    assert_eq!(repaired["writes"], 1, "{repaired}");
    assert_eq!(proxies(&s), held);
    // Delete leaves nothing: no proxy entry, the sysctls back, the node as before.
    delete(&s.lab, &spec);
    assert!(proxies(&s).is_empty(), "{:#?}", proxies(&s));
    let after = snapshot(&s.lab, MIDDLEMAN).unwrap();
    mirrornet_e2e::node::assert_same(&before, &after, "the middleman after delete");
}

#[test]
fn untouched_hosts_reach_their_twins_through_on_link_aliases() {
    untouched_hosts_reach_their_twins("onlink4", ON_LINK, 7301);
}

#[test]
fn untouched_ipv6_hosts_reach_their_twins_through_on_link_aliases() {
    untouched_hosts_reach_their_twins("onlink6", &ipv6(), 7311);
}

/// A host on an alias address is found before the node answers for it, and one that takes an
/// address the node answers for is found at the next apply: the address is left to the host
/// and reported, the host it stood for cannot open connections into that side (their replies
/// would reach the squatter), and everything else keeps working.
#[test]
fn an_alias_address_a_host_uses_is_left_to_it_and_reported() {
    left_to_the_host("onlinkdup", ON_LINK);
}

#[test]
fn an_ipv6_alias_address_a_host_uses_is_left_to_it_and_reported() {
    left_to_the_host("onlinkdup6", &ipv6());
}

fn left_to_the_host(tag: &str, yaml: &str) {
    // The middleman has an address of its own elsewhere (eth9), which a probe sent before the
    // node's address is on the side would come from.
    let (mut s, spec) = scenario_of(tag, yaml, true);
    let net = s.network.clone();
    // inner-squat sits on inner's LAN at the address by which inner reaches outer-11.
    let squatted = alias_of(&net, "outer", 11);
    let squat_with_len = format!("{squatted}/{}", net.subnet.prefix_len());
    s.lab.add_namespace("inner-squat").unwrap();
    s.lab
        .veth("inner-squat", "eth0", "inner-lan", "hsq")
        .unwrap();
    s.lab
        .exec("inner-lan", &["ip", "link", "set", "hsq", "master", "br0"])
        .unwrap();
    // A strict host: it ignores requests from a source it has no route back to.
    for key in ["all", "default", "eth0"] {
        s.lab
            .exec(
                "inner-squat",
                &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=1")],
            )
            .unwrap();
    }
    let add_squatter = |s: &Scenario| {
        s.lab
            .exec(
                "inner-squat",
                &["ip", "addr", "add", &squat_with_len, "dev", "eth0", "nodad"]
                    [..if net.is_ipv6() { 7 } else { 6 }],
            )
            .unwrap();
    };
    add_squatter(&s);
    let report = apply(&s.lab, &spec, &[]);
    check_left_to_the_squatter(&mut s, &report, &squatted.to_string(), 7321);

    // Later: the squatter goes, the address is claimed; it comes back, and the next apply
    // finds it again.
    s.lab
        .exec("inner-squat", &["ip", "addr", "flush", "dev", "eth0"])
        .unwrap();
    apply(&s.lab, &spec, &[]);
    assert!(
        proxies(&s)
            .iter()
            .any(|l| l.starts_with(&format!("{squatted} dev eth1"))),
        "claimed once free: {:#?}",
        proxies(&s)
    );
    add_squatter(&s);
    let report = apply(&s.lab, &spec, &[]);
    check_left_to_the_squatter(&mut s, &report, &squatted.to_string(), 7331);
}

fn check_left_to_the_squatter(
    s: &mut Scenario,
    report: &serde_json::Value,
    squatted: &str,
    port: u16,
) {
    let net = s.network.clone();
    let held = proxies(s);
    assert_eq!(held.len(), 2 * 63 - 1, "{held:#?}");
    assert!(
        !held
            .iter()
            .any(|l| l.starts_with(&format!("{squatted} dev eth1"))),
        "{held:#?}"
    );
    // `apply` and `show` say so.
    let text = report.to_string();
    assert!(
        text.contains(squatted),
        "apply reports {squatted}: {report}"
    );
    let show = agent(&s.lab, &["show"], &[]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains(squatted) && shown.contains("taken"),
        "show reports {squatted}:\n{shown}"
    );
    // inner-10 resolves the address to the squatter, not to the middleman.
    assert!(ping(&s.lab, "inner-10", squatted));
    assert_eq!(
        neighbour_mac(s, "inner-10", squatted),
        Some(mac_of(s, "inner-squat", "eth0"))
    );
    // outer-11, whose alias on inner's side is taken, cannot open connections into it...
    mirrornet_e2e::node::serve(s, "inner-10", port, 0);
    let to_inner = std::net::SocketAddr::new(alias_of(&net, "inner", 10), port).to_string();
    assert!(
        connect_within(
            &s.lab,
            "outer-11",
            &to_inner,
            None,
            std::time::Duration::from_secs(2)
        )
        .is_err(),
        "outer-11 must not reach inner under the squatter's address"
    );
    // ...and the rest of the network works both ways.
    let answer = connect(&s.lab, "outer-10", &to_inner, None).expect("outer-10 -> inner-10");
    assert_eq!(answer.server, "inner-10");
    mirrornet_e2e::node::serve(s, "outer-10", port, 0);
    let to_outer = std::net::SocketAddr::new(alias_of(&net, "outer", 10), port).to_string();
    let answer = connect(&s.lab, "inner-10", &to_outer, None).expect("inner-10 -> outer-10");
    assert_eq!(answer.server, "outer-10");
}

/// Under `run`: a proxy entry deleted by hand comes back by itself, and a host that takes an
/// alias address later is found by the next resync, left alone and reported; once it is gone
/// the address is answered for again.
#[test]
fn the_run_loop_repairs_proxy_entries_and_finds_a_host_that_appears_later() {
    let (s, spec) = scenario_of("onlinkrun", ON_LINK, false);
    let net = s.network.clone();
    let agent = mirrornet_e2e::node::RunningAgent::start(&s.lab, &spec, &["--resync-seconds", "2"]);
    agent.wait_ready(&s.lab);
    let limit = std::time::Duration::from_secs(15);
    let full = || proxies(&s).len() == 2 * 63;
    assert!(
        mirrornet_e2e::node::time_until(limit, full).is_some(),
        "{:#?}",
        proxies(&s)
    );
    let victim = alias_of(&net, "inner", 10).to_string();
    proxy_entry(&s, "del", &victim, "eth2");
    let repaired = mirrornet_e2e::node::time_until(limit, full);
    assert!(repaired.is_some(), "not repaired: {:#?}", proxies(&s));
    eprintln!("proxy entry repaired after {repaired:?}");

    let squatted = alias_of(&net, "outer", 11).to_string();
    let mut s = s;
    s.lab.add_namespace("inner-squat").unwrap();
    s.lab
        .veth("inner-squat", "eth0", "inner-lan", "hsq")
        .unwrap();
    s.lab
        .exec("inner-lan", &["ip", "link", "set", "hsq", "master", "br0"])
        .unwrap();
    s.lab
        .exec(
            "inner-squat",
            &[
                "ip",
                "addr",
                "add",
                &format!("{squatted}/24"),
                "dev",
                "eth0",
            ],
        )
        .unwrap();
    let claimed = |s: &Scenario| {
        proxies(s)
            .iter()
            .any(|l| l.starts_with(&format!("{squatted} dev eth1")))
    };
    let found = mirrornet_e2e::node::time_until(limit, || !claimed(&s));
    assert!(found.is_some(), "the squatter was not found");
    eprintln!("a host on {squatted} found after {found:?}");
    assert!(
        mirrornet_e2e::node::time_until(limit, || agent
            .get(&s.lab, "/readyz")
            .1
            .contains("AddressTaken"))
        .is_some(),
        "/readyz: {}",
        agent.get(&s.lab, "/readyz").1
    );
    assert!(agent.log_text().contains("taken; left to its host"));
    // The proxy watch does not fight the probe: the address stays the host's.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!claimed(&s));
    s.lab
        .exec("inner-squat", &["ip", "addr", "flush", "dev", "eth0"])
        .unwrap();
    assert!(
        mirrornet_e2e::node::time_until(limit, || claimed(&s)).is_some(),
        "not claimed again once free"
    );
}

/// The guardrails on on-link aliases: OneWay, an allow-list and verify probes of hosts in the
/// host prefix; `trace` and `translate` speak of the on-link alias; suspend withdraws the proxy
/// entries with the rest and brings them back.
#[test]
fn guardrails_suspend_trace_and_translate_understand_on_link_aliases() {
    let guarded = format!(
        "{ON_LINK}  direction: OneWay\n  answerOnly: [outer]\n  allow:\n    - {{protocol: TCP, port: 7341}}\n    - {{protocol: ICMP}}\n  verify:\n    timeoutSeconds: 10\n    probes:\n      - {{side: inner, address: 192.168.2.10, port: 7341}}\n      - {{side: outer, address: 192.168.2.10, port: 7341}}\n"
    );
    let (mut s, spec) = scenario_of("onlinkguard", &guarded, false);
    let net = s.network.clone();
    for side in ["inner", "outer"] {
        for n in [10, 11] {
            mirrornet_e2e::node::serve(&mut s, &format!("{side}-{n}"), 7341, 0);
            mirrornet_e2e::node::serve(&mut s, &format!("{side}-{n}"), 7342, 0);
        }
    }
    let report = apply(&s.lab, &spec, &[]);
    let checks = report["verification"]["checks"].to_string();
    assert!(checks.contains("192.168.2.10"), "the probes ran: {report}");
    let to = |side: &str, n: u32, port: u16| {
        std::net::SocketAddr::new(alias_of(&net, side, n), port).to_string()
    };
    let short = std::time::Duration::from_secs(2);
    // inner opens to outer on the allowed port; not on another one.
    let answer = connect(&s.lab, "inner-10", &to("outer", 11, 7341), None).expect("allowed");
    assert_eq!(answer.server, "outer-11");
    assert!(connect_within(&s.lab, "inner-10", &to("outer", 11, 7342), None, short).is_err());
    // outer only answers.
    assert!(connect_within(&s.lab, "outer-10", &to("inner", 11, 7341), None, short).is_err());

    let trace = agent(
        &s.lab,
        &[
            "trace",
            "192.168.2.10",
            &alias_of(&net, "outer", 11).to_string(),
            "--from",
            "inner",
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&trace.stdout);
    assert!(
        text.contains("on-link alias: the node answers for it on eth1"),
        "{text}"
    );
    let translate = agent(
        &s.lab,
        &["translate", "192.168.2.139", "--from", "inner"],
        &[],
    );
    let text = String::from_utf8_lossy(&translate.stdout);
    assert!(text.contains("is side outer's host 192.168.2.11"), "{text}");

    // Suspended: no proxy entry is left; resumed: all come back.
    let suspended = SpecFile::new("onlinkguard", &format!("{guarded}  suspend: true\n"));
    apply(&s.lab, &suspended, &[]);
    assert!(proxies(&s).is_empty(), "{:#?}", proxies(&s));
    assert!(!ping(
        &s.lab,
        "inner-10",
        &alias_of(&net, "outer", 11).to_string()
    ));
    apply(&s.lab, &spec, &[]);
    assert_eq!(proxies(&s).len(), 2 * 63);
    assert!(ping(
        &s.lab,
        "inner-10",
        &alias_of(&net, "outer", 11).to_string()
    ));
}

/// In a container that is not privileged (/proc/sys read-only, NET_ADMIN only), as the
/// DaemonSet runs the agent: the conflict probe needs nothing more, and `proxy_delay` is set
/// over netlink (the ARP table's per-link parameters) and put back on delete.
#[test]
fn on_link_aliases_need_nothing_beyond_net_admin() {
    let (mut s, spec) = scenario_of("onlinkro", ON_LINK, false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let bin = mirrornet_e2e::node::agent_bin();
    let in_container = |s: &Scenario, command: &str| {
        let script = format!(
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
             ! sh -c 'echo 0 > /proc/sys/net/ipv4/neigh/eth1/proxy_delay' 2>/dev/null && \
             exec setpriv --bounding-set -all,+net_admin --inh-caps -all -- {} {command} --file {}",
            bin.display(),
            spec.path()
        );
        let out = s
            .lab
            .command(MIDDLEMAN, &["unshare", "--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_container(&s, "apply");
    let delay = s
        .lab
        .stdout(
            MIDDLEMAN,
            &["sysctl", "-n", "net.ipv4.neigh.eth1.proxy_delay"],
        )
        .unwrap();
    assert_eq!(delay.trim(), "0");
    tens_reach_the_other_sides_elevens(&mut s, 7351);
    in_container(&s, "delete");
    mirrornet_e2e::node::assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "the middleman after delete",
    );
}

/// An alias address someone else's proxy entry holds on a side is theirs: mirrornet neither
/// relabels nor deletes it, and reports it as taken. Theirs replaces ours after the first apply,
/// because under VRF the first apply enslaves the side interface, and the kernel flushes a
/// link's proxy entries (theirs too) when it changes master (docs/DESIGN.md section 7).
#[test]
fn someone_elses_proxy_entry_is_left_alone() {
    let (s, spec) = scenario_of("onlinkforeign", ON_LINK, false);
    let net = s.network.clone();
    let theirs = alias_of(&net, "outer", 12).to_string();
    apply(&s.lab, &spec, &[]);
    let ours = proxies(&s).len();
    proxy_entry(&s, "del", &theirs, "eth1");
    proxy_entry(&s, "add", &theirs, "eth1");
    let report = apply(&s.lab, &spec, &[]);
    assert!(report.to_string().contains(&theirs), "reported: {report}");
    let held = proxies(&s);
    let line = format!("{theirs} dev eth1 proxy");
    let entry: Vec<&String> = held.iter().filter(|l| l.starts_with(&line)).collect();
    assert_eq!(entry.len(), 1, "{held:#?}");
    assert!(!entry[0].contains("proto 77"), "relabelled: {}", entry[0]);
    assert_eq!(held.len(), ours, "ours but one, and theirs: {held:#?}");
    // A re-apply keeps it theirs.
    let again = apply(&s.lab, &spec, &[]);
    assert_eq!(again["writes"], 0, "{again}");
    // Delete takes ours; the kernel itself flushes a link's IPv4 proxy entries with its last
    // IPv4 address (the node's, here), theirs included.
    delete(&s.lab, &spec);
    assert!(
        proxies(&s).iter().all(|l| !l.contains("proto 77")),
        "{:#?}",
        proxies(&s)
    );
}
