//! A change is kept only if the node proves it works: a probe that gets no answer rolls the
//! change back to exactly the state before it, whether the network was new or changed, and
//! whether the agent that made the change lives to see the probe fail or dies part-way (its
//! guard process reverts). The run loop does the same and then leaves the rejected spec alone.

use std::time::Duration;

use mirrornet_agent::lab::{MIDDLEMAN, Scenario, wait_for};
use mirrornet_e2e::node::{
    RunningAgent, SEED, SpecFile, agent, apply, assert_same, backend, connect, host_of, ping,
    planned_steps, scenario_of, serve, snapshot,
};

/// The seed with `verify` probing host .10 on side outer at `address`, port 9: nothing listens
/// there, so a host that exists answers with a refusal, and an absent one not at all.
fn seed_probing(address: &str, timeout: u32) -> String {
    format!(
        "{SEED}  verify:\n    timeoutSeconds: {timeout}\n    probes:\n      - {{side: outer, address: {address}, port: 9}}\n"
    )
}

fn scenario(tag: &str, yaml: &str) -> (Scenario, SpecFile) {
    scenario_of(tag, yaml, false)
}

/// `yaml` with side outer's alias moved from 192.168.3.0/24 to 192.168.4.0/24.
fn moved_outer(yaml: &str) -> String {
    let moved = yaml.replace(
        "      aliasPrefix: 192.168.3.0/24\n  verify",
        "      aliasPrefix: 192.168.4.0/24\n  verify",
    );
    assert_ne!(moved, yaml, "the seed's layout changed");
    moved
}

/// Runs `apply` expecting the checks to fail; returns stderr.
fn apply_refused(s: &Scenario, spec: &SpecFile, env: &[(&str, &str)]) -> String {
    let backend = backend();
    let out = agent(
        &s.lab,
        &["apply", "--file", spec.path(), "--backend", &backend],
        env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "apply must fail: {stderr}");
    stderr
}

fn armed_file_left(s: &Scenario) -> bool {
    s.lab
        .stdout(
            MIDDLEMAN,
            &["sh", "-c", "ls /run/mirrornet/ 2>/dev/null || true"],
        )
        .unwrap()
        .lines()
        .any(|l| l.ends_with(".armed"))
}

#[test]
fn a_probe_that_answers_keeps_the_change_and_says_so() {
    let (mut s, spec) = scenario("verify-ok", &seed_probing("192.168.2.10", 5));
    let report = apply(&s.lab, &spec, &[]);
    let checks = report["verification"]["checks"].as_array().unwrap();
    let probe = checks
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("probe plant-twin/outer")
        })
        .unwrap_or_else(|| panic!("no probe check: {report}"));
    assert_eq!(probe["passed"], true, "{report}");
    assert!(
        probe["detail"].as_str().unwrap().starts_with("refused"),
        "{report}"
    );
    serve(&mut s, "outer-11", 7000, 0);
    let answer = connect(&s.lab, "inner-10", "192.168.3.11:7000", None).unwrap();
    assert_eq!(answer.server, "outer-11");
    // Converged: nothing changes, nothing is checked again.
    let again = apply(&s.lab, &spec, &[]);
    assert_eq!(again["writes"], 0);
    assert!(again["verification"].is_null(), "{again}");
    assert!(!armed_file_left(&s));
}

#[test]
fn a_probe_without_answer_rolls_a_new_network_back_to_nothing() {
    let (s, spec) = scenario("verify-new", &seed_probing("192.168.2.99", 2));
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let stderr = apply_refused(&s, &spec, &[]);
    assert!(
        stderr.contains("verification failed: probe plant-twin/outer 192.168.2.99:9: no answer")
            && stderr.contains("rolled plant-twin back to the state before the change"),
        "{stderr}"
    );
    assert_same(
        &before,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after the rollback",
    );
    assert!(!ping(&s.lab, "inner-10", "192.168.3.10"));
    assert!(!armed_file_left(&s));
}

#[test]
fn a_probe_without_answer_rolls_a_spec_change_back_to_the_previous_spec() {
    let (mut s, spec) = scenario("verify-change", &seed_probing("192.168.2.10", 5));
    apply(&s.lab, &spec, &[]);
    let previous = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // The change moves outer's alias and probes a host that is not there.
    let changed = SpecFile::new(
        "verify-change-bad",
        &moved_outer(&seed_probing("192.168.2.99", 2)),
    );
    let stderr = apply_refused(&s, &changed, &[]);
    assert!(stderr.contains("rolled plant-twin back"), "{stderr}");
    assert_same(
        &previous,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after the rollback",
    );
    serve(&mut s, "outer-11", 7000, 0);
    let answer = connect(&s.lab, "inner-10", "192.168.3.11:7000", None).unwrap();
    assert_eq!(
        (answer.server.as_str(), host_of(&answer.seen_as)),
        ("outer-11", "192.168.3.10")
    );
}

/// The agent is killed before every step of a change (new network, then a changed spec);
/// each time its guard process rolls the node back to exactly the state before the change.
#[test]
fn the_rollback_fires_when_the_agent_dies_part_way() {
    let (s, spec) = scenario("verify-crash", &seed_probing("192.168.2.10", 5));
    let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let steps = planned_steps(&s.lab, &spec);
    for step in 0..steps {
        let at = step.to_string();
        let stderr = apply_refused(&s, &spec, &[("MIRRORNET_CRASH_AT_STEP", &at)]);
        assert!(
            stderr.contains(&format!("crashing before step {step}")),
            "{stderr}"
        );
        // The guard held our stderr open until it finished: the rollback is done.
        assert!(stderr.contains("rolled back change"), "{stderr}");
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("after the agent died before step {step} of a new network"),
        );
        assert!(!armed_file_left(&s));
    }
    apply(&s.lab, &spec, &[]);
    let previous = snapshot(&s.lab, MIDDLEMAN).unwrap();
    // A change that touches every kind of object: outer's alias and the gateway address.
    let changed = SpecFile::new(
        "verify-crash-changed",
        &moved_outer(&seed_probing("192.168.2.10", 5)).replace(
            "gatewayAddress: 192.168.2.1\n",
            "gatewayAddress: 192.168.2.254\n",
        ),
    );
    let change_steps = planned_steps(&s.lab, &changed);
    assert!(change_steps > 0);
    for step in 0..change_steps {
        let at = step.to_string();
        let stderr = apply_refused(&s, &changed, &[("MIRRORNET_CRASH_AT_STEP", &at)]);
        assert!(stderr.contains("rolled back change"), "{stderr}");
        assert_same(
            &previous,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("after the agent died before step {step} of a spec change"),
        );
    }
    println!("agent deaths rolled back: {steps} in a new network, {change_steps} in a change");
}

/// `run`: a spec change whose probe fails is rolled back once and not retried; the report
/// names the check; the next good spec is applied.
#[test]
fn the_run_loop_rolls_back_once_and_keeps_the_previous_spec() {
    let (mut s, spec) = scenario("verify-run", &seed_probing("192.168.2.10", 5));
    let running = RunningAgent::start(&s.lab, &spec, &[]);
    running.wait_ready(&s.lab);
    serve(&mut s, "outer-11", 7000, 0);
    let previous = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let bad = moved_outer(&seed_probing("192.168.2.99", 2));
    std::fs::write(&spec.path, &bad).unwrap();
    let mut body = String::new();
    let reported = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        body = running.get(&s.lab, "/readyz").1;
        body.contains("plant-twin: VerificationFailed")
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "no VerificationFailed report: {body}\n{}",
        running.log_text()
    );
    // Let a few more passes run (a drift event, a resync): the rejected spec is not retried.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_same(
        &previous,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after the rollback",
    );
    let log = running.log_text();
    assert_eq!(
        log.matches("a change failed its checks").count(),
        1,
        "{log}"
    );
    let answer = connect(&s.lab, "inner-10", "192.168.3.11:7000", None).unwrap();
    assert_eq!(answer.server, "outer-11");
    // A spec that works is taken.
    let good = moved_outer(&seed_probing("192.168.2.10", 5));
    std::fs::write(&spec.path, &good).unwrap();
    let taken = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        connect(&s.lab, "inner-10", "192.168.4.11:7000", None).ok()
    });
    assert!(
        taken.is_some(),
        "the good spec was not applied:\n{}",
        running.log_text()
    );
}

/// The probe is made inside its side: with outer's host .11 gone, inner's host .11 (the same
/// address, one side over) must not answer for it.
#[test]
fn a_twin_host_on_another_side_cannot_answer_a_probe() {
    let (s, spec) = scenario("verify-twin", &seed_probing("192.168.2.10", 5));
    apply(&s.lab, &spec, &[]);
    s.lab
        .exec("outer-11", &["ip", "addr", "flush", "dev", "eth0"])
        .unwrap();
    let previous = snapshot(&s.lab, MIDDLEMAN).unwrap();
    let probing_11 = SpecFile::new(
        "verify-twin-11",
        &moved_outer(&seed_probing("192.168.2.11", 2)),
    );
    let stderr = apply_refused(&s, &probing_11, &[]);
    assert!(
        stderr.contains("probe plant-twin/outer 192.168.2.11:9: no answer"),
        "{stderr}"
    );
    assert_same(
        &previous,
        &snapshot(&s.lab, MIDDLEMAN).unwrap(),
        "after the rollback",
    );
}

/// A suspended network has no path to probe: suspending one with probes is not refused.
#[test]
fn a_network_with_probes_can_be_suspended_and_resumed() {
    let (s, spec) = scenario("verify-suspend", &seed_probing("192.168.2.10", 5));
    apply(&s.lab, &spec, &[]);
    let suspended = SpecFile::new(
        "verify-suspended",
        &format!("{}  suspend: true\n", seed_probing("192.168.2.10", 5)),
    );
    apply(&s.lab, &suspended, &[]);
    assert!(!ping(&s.lab, "inner-10", "192.168.3.11"));
    // Resuming is a change like any other: checked, probe included.
    let resumed = apply(&s.lab, &spec, &[]);
    assert!(
        resumed["verification"]["checks"]
            .as_array()
            .is_some_and(|c| c
                .iter()
                .any(|c| c["name"].as_str().unwrap().starts_with("probe"))),
        "{resumed}"
    );
    // The hosts' failed ARP for the withdrawn gateway drops a first packet or so.
    assert!((0..5).any(|_| ping(&s.lab, "inner-10", "192.168.3.11")));
}
