//! The VM harness against Debian's stock kernel: VRF and nftables NAT work there, and two
//! guests joined by a wire reach each other. These boot real VMs (TCG, a few seconds each); they
//! fail, never skip, when not root or when qemu is missing.

use std::time::Duration;

use mirrornet_e2e::vm::{Cluster, Kernel, VmError, VmOutcome, VmSpec};

/// Panics with the error's own message (which carries the console tail), not its Debug form.
fn must<T>(result: Result<T, VmError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

fn report(outcome: &VmOutcome) {
    eprintln!(
        "VM {}: ready to run its script after {:?}, powered off after {:?}",
        outcome.name,
        outcome.boot_time().unwrap_or_default(),
        outcome.duration
    );
}

/// The datapath's modules are loaded, a VRF device can be made, and nft accepts the recipe's
/// pieces: a nat chain with prefix NAT, a raw chain setting the original-direction zone.
const SINGLE: &str = r#"
mnvm_value kernel "$(uname -r)"
mnvm_check modules sh -c '
    for m in vrf veth nf_tables nf_nat nf_conntrack nft_nat nft_chain_nat nft_ct 9p virtio_net; do
        grep -q "^$m " /proc/modules || { echo "$m is not loaded"; exit 1; }
    done'
mnvm_check vrf ip link add vrf-test type vrf table 10
mnvm_check vrf-up ip link set vrf-test up
mnvm_check vrf-shown ip -d link show vrf-test
cat >"$TMPDIR/smoke.nft" <<'NFT'
table ip mnvm_smoke {
    chain prerouting_raw {
        type filter hook prerouting priority raw; policy accept;
        iifname "eth9" ct original zone set 1
    }
    chain prerouting_nat {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth9" ip daddr 192.168.3.0/24 dnat ip prefix to 192.168.2.0/24
    }
    chain postrouting_nat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth9" ip saddr 192.168.2.0/24 snat ip prefix to 192.168.3.0/24
    }
}
NFT
mnvm_check nft-nat nft -f "$TMPDIR/smoke.nft"
mnvm_check nft-listed nft list table ip mnvm_smoke
"#;

#[test]
fn the_stock_kernel_has_vrf_and_nftables_nat() {
    let kernel = must(Kernel::stock());
    let outcome = must(
        must(
            VmSpec::new("smoke", SINGLE)
                .timeout(Duration::from_secs(90))
                .boot(),
        )
        .wait(),
    );
    report(&outcome);
    must(outcome.ensure_passed(&[
        "modules",
        "vrf",
        "vrf-up",
        "vrf-shown",
        "nft-nat",
        "nft-listed",
    ]));
    assert_eq!(outcome.value("kernel"), Some(kernel.release.as_str()));
    let vrf = &outcome.check("vrf-shown").unwrap().output;
    assert!(
        vrf.iter().any(|line| line.contains("vrf table 10")),
        "{vrf:#?}"
    );
    let listed = outcome.check("nft-listed").unwrap().output.join("\n");
    assert!(listed.contains("dnat prefix to 192.168.2.0/24"), "{listed}");
    assert!(listed.contains("ct original zone set 1"), "{listed}");
}

/// Each side pings the other. Both are addressed before either pings (a barrier), and neither
/// powers off before both scripts are done (the harness's exit barrier).
const PAIR: &str = r#"
ip addr add "$OWN_ADDRESS"/24 dev eth1
ip link set eth1 up
mnvm_check mac cat /sys/class/net/eth1/address
mnvm_barrier addressed
mnvm_check peer-up mnvm_until 30 ping -c 1 -W 1 "$PEER_ADDRESS"
mnvm_check ping ping -c 3 -i 0.2 -W 2 "$PEER_ADDRESS"
"#;

fn pair_member(name: &str, own: &str, peer: &str) -> VmSpec {
    // 192.0.2.0/24 is TEST-NET-1: these addresses exist only inside the two guests.
    VmSpec::new(name, PAIR)
        .env("OWN_ADDRESS", own)
        .env("PEER_ADDRESS", peer)
        .nic("a-b", "eth1")
        .timeout(Duration::from_secs(120))
}

#[test]
fn two_vms_joined_by_a_wire_ping_each_other() {
    let cluster = must(Cluster::boot([
        pair_member("pair-a", "192.0.2.1", "192.0.2.2"),
        pair_member("pair-b", "192.0.2.2", "192.0.2.1"),
    ]));
    let outcomes = must(cluster.wait());
    for (outcome, mac) in outcomes
        .iter()
        .zip(["52:54:00:4d:00:00", "52:54:00:4d:01:00"])
    {
        report(outcome);
        must(outcome.ensure_passed(&["mac", "peer-up", "ping"]));
        assert_eq!(outcome.check("mac").unwrap().output, vec![mac.to_owned()]);
        let ping = &outcome.check("ping").unwrap().output;
        let rtt = ping
            .iter()
            .find(|line| line.starts_with("rtt"))
            .expect("ping prints its RTT");
        eprintln!("VM {}: {rtt}", outcome.name);
    }
}

/// The harness's own promise: a guest that never finishes is killed at its timeout, and the
/// failure shows what the guest printed last.
#[test]
fn a_hung_guest_is_killed_at_its_timeout() {
    let timeout = Duration::from_secs(20);
    let script = "mnvm_check doomed sh -c 'echo about to hang'\nsleep 600\n";
    let error = must(VmSpec::new("hung", script).timeout(timeout).boot())
        .wait()
        .expect_err("the guest sleeps past its timeout");
    match &error {
        VmError::Timeout {
            vm,
            after,
            console_tail,
        } => {
            assert_eq!((vm.as_str(), *after), ("hung", timeout));
            assert!(console_tail.contains("about to hang"), "{error}");
        }
        other => panic!("expected a timeout, got: {other}"),
    }
}
