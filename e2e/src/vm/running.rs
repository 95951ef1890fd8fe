//! Waits for booted guests: reads their consoles until they power off, time out or die, and
//! releases barriers.
//!
//! A guest at a barrier prints `MNVM {"event":"barrier","name":N}` and reads its serial input
//! until the host types `go N`. A lone guest is released at once; a [`Cluster`] releases a
//! barrier when every guest still running waits at it, and fails at once when they all wait at
//! different ones (they never could proceed).

use std::time::Duration;

use super::boot::{RunDir, boot_all};
use super::console::{self, GuestEvent, Transcript};
use super::qemu::{Poll, Process};
use super::{VmError, VmOutcome, VmSpec};

/// How many console lines an error message quotes.
const TAIL_LINES: usize = 40;

/// A guest whose qemu is running. Dropping it kills qemu.
#[derive(Debug)]
pub struct RunningVm {
    name: String,
    timeout: Duration,
    process: Process,
    transcript: Transcript,
    console: String,
    /// The barrier the guest waits at, until the host releases it.
    waiting: Option<String>,
    /// `MIRRORNET_VM_CONSOLE=1` echoes every console line to stderr as it arrives.
    echo: bool,
    _run_dir: RunDir,
}

impl RunningVm {
    pub(crate) fn new(name: String, timeout: Duration, process: Process, run_dir: RunDir) -> Self {
        Self {
            name,
            timeout,
            process,
            transcript: Transcript::default(),
            console: String::new(),
            waiting: None,
            echo: std::env::var_os("MIRRORNET_VM_CONSOLE").is_some_and(|v| v == "1"),
            _run_dir: run_dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the guest powers off. Errors if it does not within its timeout (it is
    /// killed), or if qemu exits before the script reported its exit code. A script that fails is
    /// not an error here: see [`VmOutcome::ensure_ok`].
    pub fn wait(mut self) -> Result<VmOutcome, VmError> {
        loop {
            if let Some(outcome) = self.step(Duration::from_millis(500))? {
                return Ok(outcome);
            }
            if self.waiting.is_some() {
                self.release();
            }
        }
    }

    /// Lets the guest past the barrier it waits at.
    fn release(&mut self) {
        if let Some(barrier) = self.waiting.take() {
            self.process.send(&format!("go {barrier}"));
        }
    }

    /// Takes in the console lines that arrive within `wait` (and all already waiting); returns
    /// the outcome once qemu has exited.
    pub(crate) fn step(&mut self, wait: Duration) -> Result<Option<VmOutcome>, VmError> {
        let remaining = self.timeout.saturating_sub(self.process.elapsed());
        if remaining.is_zero() {
            self.process.kill();
            return Err(VmError::Timeout {
                vm: self.name.clone(),
                after: self.timeout,
                console_tail: console::tail(&self.console, TAIL_LINES),
            });
        }
        let mut poll = self.process.poll(wait.min(remaining));
        loop {
            match poll {
                Poll::Line(at, line) => {
                    if self.echo {
                        eprintln!("[{} {:>6.2}s] {line}", self.name, at.as_secs_f64());
                    }
                    if let Some(GuestEvent::Barrier { name }) = self.transcript.feed(at, &line) {
                        self.waiting = Some(name.clone());
                    }
                    self.console.push_str(&line);
                    self.console.push('\n');
                }
                Poll::Quiet => return Ok(None),
                Poll::Closed => return self.finish().map(Some),
            }
            poll = self.process.poll(Duration::ZERO);
        }
    }

    fn finish(&mut self) -> Result<VmOutcome, VmError> {
        let duration = self.process.elapsed();
        let (status, stderr) = self.process.reap()?;
        let exited = self
            .transcript
            .lines()
            .iter()
            .any(|line| matches!(line.event, GuestEvent::Exit { .. }));
        if !status.success() || !exited {
            return Err(VmError::Died {
                vm: self.name.clone(),
                status: status.to_string(),
                stderr: stderr.trim().to_owned(),
                console_tail: console::tail(&self.console, TAIL_LINES),
            });
        }
        Ok(VmOutcome {
            name: self.name.clone(),
            lines: std::mem::take(&mut self.transcript).into_lines(),
            console: std::mem::take(&mut self.console),
            duration,
        })
    }
}

/// Several guests booted together, their NICs joined by wire name.
#[derive(Debug)]
pub struct Cluster {
    vms: Vec<RunningVm>,
}

impl Cluster {
    /// Boots all specs at once (they run concurrently, one vCPU each).
    pub fn boot(specs: impl IntoIterator<Item = VmSpec>) -> Result<Self, VmError> {
        Ok(Self {
            vms: boot_all(specs.into_iter().collect())?,
        })
    }

    /// Waits for every guest; outcomes in boot order. The first guest that times out or dies
    /// ends the wait with its error, and the others are killed.
    pub fn wait(self) -> Result<Vec<VmOutcome>, VmError> {
        let mut pending: Vec<(usize, RunningVm)> = self.vms.into_iter().enumerate().collect();
        let mut outcomes: Vec<Option<VmOutcome>> = (0..pending.len()).map(|_| None).collect();
        while !pending.is_empty() {
            let mut still = Vec::with_capacity(pending.len());
            for (index, mut vm) in pending {
                match vm.step(Duration::from_millis(20))? {
                    Some(outcome) => outcomes[index] = Some(outcome),
                    None => still.push((index, vm)),
                }
            }
            pending = still;
            let waiting: Vec<Option<&str>> = pending
                .iter()
                .map(|(_, vm)| vm.waiting.as_deref())
                .collect();
            match barrier_decision(&waiting) {
                Barrier::Release => pending.iter_mut().for_each(|(_, vm)| vm.release()),
                Barrier::Hold => {}
                Barrier::Deadlock => {
                    let at = pending
                        .iter()
                        .map(|(_, vm)| {
                            format!("{} at {}", vm.name, vm.waiting.as_deref().unwrap_or(""))
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(VmError::Deadlock { at });
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every VM finished"))
            .collect())
    }
}

/// What to do about barriers, given where each running guest waits (`None`: not at one).
#[derive(Debug, PartialEq, Eq)]
enum Barrier {
    Release,
    Hold,
    Deadlock,
}

fn barrier_decision(waiting: &[Option<&str>]) -> Barrier {
    let Some(first) = waiting.first().copied().flatten() else {
        return Barrier::Hold;
    };
    if waiting.iter().any(Option::is_none) {
        Barrier::Hold
    } else if waiting.iter().all(|at| *at == Some(first)) {
        Barrier::Release
    } else {
        Barrier::Deadlock
    }
}

impl VmSpec {
    /// Boots this guest on its own; its NICs, if any, need peers, so use [`Cluster`] for them.
    pub fn boot(self) -> Result<RunningVm, VmError> {
        Ok(boot_all(vec![self])?.pop().expect("one VM was booted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_opens_when_every_running_guest_waits_at_it() {
        assert_eq!(
            barrier_decision(&[Some("exit"), Some("exit")]),
            Barrier::Release
        );
        assert_eq!(barrier_decision(&[Some("exit")]), Barrier::Release);
        assert_eq!(barrier_decision(&[Some("exit"), None]), Barrier::Hold);
        assert_eq!(barrier_decision(&[None, Some("exit")]), Barrier::Hold);
        assert_eq!(barrier_decision(&[]), Barrier::Hold);
        assert_eq!(
            barrier_decision(&[Some("exit"), Some("setup")]),
            Barrier::Deadlock
        );
    }
}
