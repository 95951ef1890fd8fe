//! The VRF backend on Debian's stock kernel (this machine's has no VRF), in VMs:
//!
//! * the same namespace suites as `tests/scenarios.rs`, `tests/run_mode.rs` and
//!   `tests/verified_apply.rs` — the very test binaries cargo built — each inside one VM with
//!   `MIRRORNET_E2E_BACKEND=vrf`;
//! * the seed topology across three VMs: a middleman with two NICs and no network namespaces,
//!   and one VM per side holding the identical 192.168.2.10, joined by qemu wires.
//!
//! The guests see this machine's root read-only, so they run the agent and test binaries of
//! this build in place.

use std::path::PathBuf;
use std::time::Duration;

use mirrornet_e2e::node::{agent_bin, require_root};
use mirrornet_e2e::vm::{Cluster, VmError, VmOutcome, VmSpec};

fn must<T>(result: Result<T, VmError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

/// The newest build of integration test `name` next to this test's own binary.
fn test_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let prefix = format!("{name}-");
    std::fs::read_dir(&deps)
        .expect("reading the deps dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && !n.contains('.'))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` test binary in {}: build the tests first (cargo test --workspace \
                 builds every test binary before running any)",
                deps.display()
            )
        })
}

/// Test names and verdicts from libtest's output.
fn verdicts(output: &[String]) -> Vec<(String, bool)> {
    output
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("test ")?;
            let (name, verdict) = rest.rsplit_once(" ... ")?;
            Some((name.to_owned(), verdict.trim() == "ok"))
        })
        .collect()
}

#[test]
fn the_scenario_suite_passes_with_vrf_inside_one_vm() {
    run_suite_in_vm(
        "scenarios",
        10,
        &["identical_five_tuple_from_both_sides_uses_two_conntrack_zones"],
    );
}

/// Drift repair (the VRF device itself deleted), hot-plug, restarts and reloads, under VRF.
#[test]
fn the_run_mode_suite_passes_with_vrf_inside_one_vm() {
    run_suite_in_vm("run_mode", 5, &["every_tampered_object_is_repaired"]);
}

/// Probes bound to the sides' VRF devices, rollbacks (also by the guard of a killed agent)
/// and the run loop's rejected specs, under VRF.
#[test]
fn the_verified_apply_suite_passes_with_vrf_inside_one_vm() {
    run_suite_in_vm(
        "verified_apply",
        7,
        &[
            "a_probe_that_answers_keeps_the_change_and_says_so",
            "the_rollback_fires_when_the_agent_dies_part_way",
        ],
    );
}

/// Rollback at every step, foreign state kept, conflicts refused, allow-lists and suspend,
/// under VRF: the rollback of a first VRF also takes back the kernel's l3mdev rule.
#[test]
fn the_safety_suite_passes_with_vrf_inside_one_vm() {
    run_suite_in_vm(
        "safety",
        12,
        &["a_failure_at_any_step_of_an_apply_rolls_back_to_the_state_before"],
    );
}

/// On-link aliases under VRF: untouched hosts in both families, and an alias address a host
/// uses left to it (the ARP answer needs the alias route in each side's VRF table).
#[test]
fn the_on_link_suite_passes_with_vrf_inside_one_vm() {
    run_suite_in_vm(
        "on_link",
        3,
        &[
            "untouched_hosts_reach_their_twins_through_on_link_aliases",
            "an_alias_address_a_host_uses_is_left_to_it_and_reported",
        ],
    );
}

/// Runs the namespace test binary `name` inside a VM with backend VRF; at least `expected`
/// tests must pass, among them `must_run`.
fn run_suite_in_vm(name: &str, expected: usize, must_run: &[&str]) {
    require_root();
    let suite = test_binary(name);
    let script = r#"
mnvm_value vrf-module "$(grep -c '^vrf ' /proc/modules)"
mnvm_check suite env MIRRORNET_E2E_BACKEND=vrf MIRRORNET_AGENT_BIN="$AGENT" \
    "$SUITE" --test-threads=2
"#;
    let outcome = must(
        must(
            VmSpec::new(format!("vrf-{}", name.replace('_', "-")), script)
                .env("SUITE", suite.display().to_string())
                .env("AGENT", agent_bin().display().to_string())
                .memory_mb(1024)
                .timeout(Duration::from_secs(540))
                .boot(),
        )
        .wait(),
    );
    eprintln!(
        "VM {}: ready after {:?}, suite done and powered off after {:?}",
        outcome.name,
        outcome.boot_time().unwrap_or_default(),
        outcome.duration
    );
    let suite = outcome.check("suite").expect("the suite ran");
    for line in &suite.output {
        eprintln!("  {line}");
    }
    let verdicts = verdicts(&suite.output);
    assert!(
        verdicts.len() >= expected,
        "expected the whole suite, got {verdicts:?}"
    );
    let failed: Vec<&String> = verdicts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
    assert!(failed.is_empty(), "failed under VRF: {failed:?}");
    for test in must_run {
        assert!(
            verdicts.iter().any(|(n, ok)| n == test && *ok),
            "{test} ran and passed"
        );
    }
    must(outcome.ensure_passed(&["suite"]));
}

/// Everything the middleman holds, to compare before apply and after delete.
const SNAPSHOT: &str = r#"
snap() {
    ip -d link show | grep -v '^ *link/'
    ip addr show
    ip -4 rule show; ip -6 rule show
    ip -4 route show table all | sort; ip -6 route show table all | sort
    nft list ruleset
    sysctl -a 2>/dev/null | grep -E 'forwarding|rp_filter|src_valid_mark' | sort
}
# The kernel restores some things by itself after a VRF releases an interface (the link is
# cycled; its IPv6 link-local address and route come back after duplicate address detection):
# wait for that to settle, then compare.
settled() { ! ip -6 addr show | grep -q tentative; }
same_as_before() { snap > "$TMPDIR/after"; cmp -s "$TMPDIR/before" "$TMPDIR/after"; }
"#;

const MIDDLEMAN: &str = r#"
ip link set eth1 up; ip link set eth2 up
mnvm_until 20 settled
snap > "$TMPDIR/before"
mnvm_check apply "$AGENT" apply --file "$SPEC"
mnvm_check show "$AGENT" show
mnvm_check vrfs ip -d link show type vrf
mnvm_check rules ip rule show
mnvm_barrier applied
mnvm_barrier go
mnvm_barrier traffic-done
mnvm_check conntrack conntrack -L -p tcp --orig-port-src 40000
mnvm_check reapply "$AGENT" apply --file "$SPEC"
mnvm_check delete "$AGENT" delete --file "$SPEC"
mnvm_until 20 same_as_before || true
mnvm_check residue diff -u "$TMPDIR/before" "$TMPDIR/after"
"#;

const SIDE: &str = r#"
ip link set eth0 up
ip addr add 192.168.2.10/24 dev eth0
ip route add default via 192.168.2.1
"$AGENT" probe serve --port 7000 --identity "$SIDE" --hold-ms 1000 &
mnvm_barrier applied
mnvm_check reach mnvm_until 30 ping -c 1 -W 1 192.168.3.10
mnvm_check ping ping -c 3 -i 0.2 -W 2 192.168.3.10
mnvm_barrier go
mnvm_check connect "$AGENT" probe connect 192.168.3.10:7000 --from-port 40000
mnvm_barrier traffic-done
"#;

#[test]
fn the_seed_topology_across_three_vms_without_namespaces() {
    require_root();
    let agent = agent_bin().display().to_string();
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed.yaml");
    let spec = spec.canonicalize().expect("examples/seed.yaml");
    let middleman = VmSpec::new("middleman", format!("{SNAPSHOT}{MIDDLEMAN}"))
        .env("AGENT", &agent)
        .env("SPEC", spec.display().to_string())
        .nic("inner-wire", "eth1")
        .nic("outer-wire", "eth2")
        .timeout(Duration::from_secs(300));
    let side = |name: &str, wire: &str| {
        VmSpec::new(name, SIDE)
            .env("AGENT", &agent)
            .env("SIDE", name)
            .nic(wire, "eth0")
            .timeout(Duration::from_secs(300))
    };
    let outcomes: Vec<VmOutcome> = must(
        must(Cluster::boot([
            middleman,
            side("inner", "inner-wire"),
            side("outer", "outer-wire"),
        ]))
        .wait(),
    );
    for o in &outcomes {
        eprintln!(
            "VM {}: ready after {:?}, done after {:?}",
            o.name,
            o.boot_time().unwrap_or_default(),
            o.duration
        );
    }
    let [mm, inner, outer] = &outcomes[..] else {
        panic!("three outcomes expected");
    };
    must(mm.ensure_passed(&[
        "apply",
        "show",
        "vrfs",
        "rules",
        "conntrack",
        "reapply",
        "delete",
        "residue",
    ]));
    let show = mm.check("show").unwrap().output.join("\n");
    assert!(show.contains("(VRF): in sync"), "{show}");
    let rules = mm.check("rules").unwrap().output.join("\n");
    assert!(
        rules.contains("1000:\tfrom all lookup [l3mdev-table]"),
        "{rules}"
    );
    assert!(
        rules.contains("500:\tfrom all fwmark"),
        "mark rules ahead of l3mdev: {rules}"
    );
    let reapply = mm.check("reapply").unwrap().output.join("\n");
    assert!(reapply.contains("0 kernel writes"), "{reapply}");
    let conntrack = mm.check("conntrack").unwrap().output.join("\n");
    assert!(
        conntrack.contains("zone-orig=40000") && conntrack.contains("zone-orig=40001"),
        "two entries, one per side's zone: {conntrack}"
    );
    for (side, other) in [(inner, "outer"), (outer, "inner")] {
        must(side.ensure_passed(&["reach", "ping", "connect"]));
        let answer = side.check("connect").unwrap().output.join("\n");
        assert!(
            answer.starts_with(&format!("{other} 192.168.3.10:")),
            "{} reached {answer:?}",
            side.name
        );
    }
}
