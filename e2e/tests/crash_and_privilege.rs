//! A node's routing is never left broken: the agent killed before any step of an apply or a
//! delete leaves a state the next run converges from, with no duplicate objects and, after a
//! delete, nothing at all. And the agent needs exactly CAP_NET_ADMIN, nothing more.
//!
//! The crash points are enumerated from the agent's own plan (`plan -o json`), so a new step is
//! covered without a new test. Needs the agent built with `--features failpoints` (what
//! `cargo xtask test` builds).

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    SpecFile, agent, apply, assert_same, delete, ping, planned_steps, seed_scenario, snapshot,
};

fn crash(s: &Scenario, command: &str, spec: &SpecFile, step: usize) {
    let at = step.to_string();
    let out = agent(
        &s.lab,
        &[command, "--file", spec.path()],
        &[("MIRRORNET_CRASH_AT_STEP", &at)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("crashing before step {step}")),
        "the agent must have crashed before step {step} (built without --features failpoints?): {stderr}"
    );
}

#[test]
fn a_crash_before_any_step_of_apply_or_delete_converges_on_the_next_run() {
    let (s, spec) = seed_scenario("crash", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // The converged state, for comparison; then back to nothing.
    apply(&s.lab, &spec, &[]);
    let converged = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let delete_steps = delete(&s.lab, &spec)["steps"].as_array().unwrap().len();
    assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), "setup");

    let apply_steps = planned_steps(&s.lab, &spec);
    for step in 0..apply_steps {
        crash(&s, "apply", &spec, step);
        let report = apply(&s.lab, &spec, &[]);
        assert_same(
            &converged,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("apply after a crash before step {step}: {report}"),
        );
        assert_eq!(apply(&s.lab, &spec, &[])["writes"], 0);
        // And a crash in the middle of the delete that follows.
        crash(&s, "delete", &spec, step % delete_steps);
        delete(&s.lab, &spec);
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("delete after a crash before step {step}"),
        );
    }
    println!("crash points exercised: {apply_steps} in apply, {apply_steps} in delete");
}

/// Runs the agent with only the given capabilities (root's uid, a reduced bounding set).
fn agent_with_caps(s: &Scenario, caps: &str, args: &[&str]) -> std::process::Output {
    let bin = mirrornet_e2e::node::agent_bin();
    let bounding = format!("-all{caps}");
    let mut full = vec![
        "setpriv",
        "--bounding-set",
        bounding.as_str(),
        "--inh-caps",
        "-all",
        "--",
        bin.to_str().unwrap(),
    ];
    full.extend(args);
    s.lab.command(MIDDLEMAN, &full).output().unwrap()
}

#[test]
fn cap_net_admin_is_all_the_agent_needs() {
    let (s, spec) = seed_scenario("caps", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // Without any capability: refused by the kernel, nothing changed, the error says why.
    let out = agent_with_caps(&s, "", &["apply", "--file", spec.path()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Operation not permitted") || stderr.contains("ermission"),
        "{stderr}"
    );
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "no capabilities",
    );
    // With CAP_NET_ADMIN only: apply, traffic, show, delete all work.
    let with_net_admin =
        |verb: &str| agent_with_caps(&s, ",+net_admin", &[verb, "--file", spec.path()]);
    applies_crosses_and_deletes(&s, &before, with_net_admin, || {
        let out = agent_with_caps(&s, ",+net_admin", &["show"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("in sync"));
    });
}

/// The seed applied through `agent` (`apply` or `delete` under some restriction) succeeds and
/// carries traffic, `meanwhile` runs, and the delete leaves the middleman as it was (`before`).
fn applies_crosses_and_deletes(
    s: &Scenario,
    before: &str,
    agent: impl Fn(&str) -> std::process::Output,
    meanwhile: impl FnOnce(),
) {
    let succeeds = |verb: &str| {
        let out = agent(verb);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    succeeds("apply");
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    meanwhile();
    succeeds("delete");
    assert_same(
        before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after delete",
    );
}

/// A container that is not privileged sees /proc/sys read-only: the agent sets the IPv4
/// interface settings it needs over rtnetlink instead, and puts them back on delete.
#[test]
fn a_read_only_proc_sys_is_worked_around_over_netlink() {
    let (s, spec) = seed_scenario("rosys", false);
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let bin = mirrornet_e2e::node::agent_bin();
    let in_container = |command: &str| {
        let script = format!(
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
             ! sh -c 'echo 1 > /proc/sys/net/ipv4/conf/eth1/forwarding' 2>/dev/null && \
             exec setpriv --bounding-set -all,+net_admin --inh-caps -all -- {} {command} --file {}",
            bin.display(),
            spec.path()
        );
        s.lab
            .command(MIDDLEMAN, &["unshare", "--mount", "sh", "-c", &script])
            .output()
            .unwrap()
    };
    applies_crosses_and_deletes(&s, &before, in_container, || {
        let forwarding = s
            .lab
            .stdout(
                MIDDLEMAN,
                &["sysctl", "-n", "net.ipv4.conf.eth1.forwarding"],
            )
            .unwrap();
        assert_eq!(forwarding.trim(), "1");
    });
}
