//! What a guest reported, and the judgement of it a test usually wants.

use std::time::Duration;

use super::VmError;
use super::console::{self, Check, GuestEvent, GuestLine};

/// A guest that powered off after its script.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    pub name: String,
    /// The protocol lines, in the order they arrived.
    pub lines: Vec<GuestLine>,
    /// The whole serial console.
    pub console: String,
    /// From qemu's start to its exit.
    pub duration: Duration,
}

impl VmOutcome {
    /// The script's exit code.
    pub fn exit_code(&self) -> Option<i32> {
        self.lines.iter().find_map(|line| match line.event {
            GuestEvent::Exit { code, .. } => Some(code),
            _ => None,
        })
    }

    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.lines.iter().filter_map(|line| match &line.event {
            GuestEvent::Check(check) => Some(check),
            _ => None,
        })
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks().find(|check| check.name == name)
    }

    /// The last value reported under `name` with `mnvm_value`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.lines.iter().rev().find_map(|line| match &line.event {
            GuestEvent::Value { name: n, value } if n == name => Some(value.as_str()),
            _ => None,
        })
    }

    /// Host time from starting qemu until the guest was ready to run the script: firmware,
    /// kernel, module loading and mounting the host root.
    pub fn boot_time(&self) -> Option<Duration> {
        self.lines
            .iter()
            .find(|line| matches!(line.event, GuestEvent::Ready { .. }))
            .map(|line| line.at)
    }

    /// Passes when the script exited 0, every check passed, and every protocol line parsed.
    pub fn ensure_ok(&self) -> Result<(), VmError> {
        self.ensure_passed(&[])
    }

    /// [`Self::ensure_ok`], and each of `expected` was checked: a script that stopped early
    /// cannot pass by skipping a check.
    pub fn ensure_passed(&self, expected: &[&str]) -> Result<(), VmError> {
        let mut failures = Vec::new();
        match self.exit_code() {
            Some(0) => {}
            Some(code) => failures.push(format!("the script exited with {code}")),
            None => failures.push("the script reported no exit code".into()),
        }
        for line in &self.lines {
            match &line.event {
                GuestEvent::Check(check) if !check.ok => failures.push(format!(
                    "check {} failed (exit {}){}",
                    check.name,
                    check.exit,
                    check
                        .output
                        .iter()
                        .map(|line| format!("\n    {line}"))
                        .collect::<String>()
                )),
                GuestEvent::Fatal { what } => failures.push(format!("init failed: {what}")),
                GuestEvent::Unparsed { text, error } => {
                    failures.push(format!("unparsable protocol line ({error}): {text}"))
                }
                _ => {}
            }
        }
        for name in expected {
            if self.check(name).is_none() {
                failures.push(format!("check {name} never ran"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(VmError::GuestFailed {
                vm: self.name.clone(),
                failures,
                console_tail: console::tail(&self.console, 40),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(events: Vec<GuestEvent>) -> VmOutcome {
        VmOutcome {
            name: "middleman".into(),
            lines: events
                .into_iter()
                .map(|event| GuestLine {
                    at: Duration::from_secs(3),
                    event,
                })
                .collect(),
            console: "booting\nwhy it failed\n".into(),
            duration: Duration::from_secs(5),
        }
    }

    fn check(name: &str, ok: bool, output: &[&str]) -> GuestEvent {
        GuestEvent::Check(Check {
            name: name.into(),
            ok,
            exit: if ok { 0 } else { 3 },
            output: output.iter().map(|line| line.to_string()).collect(),
        })
    }

    #[test]
    fn a_clean_run_passes() {
        let outcome = outcome(vec![
            GuestEvent::Ready { uptime: 2.0 },
            check("vrf", true, &[]),
            GuestEvent::Exit {
                code: 0,
                uptime: 3.0,
            },
        ]);
        outcome.ensure_passed(&["vrf"]).unwrap();
        assert_eq!(outcome.boot_time(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn every_failure_is_named_with_its_output() {
        let outcome = outcome(vec![
            check("vrf", false, &["why it failed"]),
            GuestEvent::Exit {
                code: 4,
                uptime: 3.0,
            },
        ]);
        let message = outcome
            .ensure_passed(&["vrf", "nft"])
            .unwrap_err()
            .to_string();
        for expected in [
            "VM middleman failed",
            "the script exited with 4",
            "check vrf failed (exit 3)\n    why it failed",
            "check nft never ran",
            "console tail:\nbooting",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from:\n{message}"
            );
        }
    }

    #[test]
    fn a_script_that_never_reported_its_exit_fails() {
        let message = outcome(vec![]).ensure_ok().unwrap_err().to_string();
        assert!(message.contains("no exit code"), "{message}");
    }
}
