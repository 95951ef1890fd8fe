//! Reads a guest's serial console: plain text for people, `MNVM {json}` lines for the test.
//!
//! The guest's `/init` and the shell functions in `guest-lib.sh` print one JSON object per line
//! after the `MNVM ` marker. The marker is searched anywhere in a line, not only at its start,
//! because a kernel message can land on the serial port in the middle of a line. Lines printed
//! between a check's `begin` and its result are that check's output.

use std::time::Duration;

use serde::Deserialize;

/// What marks a line as protocol rather than console chatter.
pub const MARKER: &str = "MNVM ";

/// One protocol line, with the time it reached the host since qemu was started.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestLine {
    pub at: Duration,
    pub event: GuestEvent,
}

/// What the guest reported. `uptime` values are the guest kernel's own clock in seconds, so they
/// show how much of a boot was the guest and how much was qemu and firmware.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuestEvent {
    /// `/init` started: the kernel is up.
    Init { uptime: f64 },
    /// Modules loaded, NICs named, host root mounted: the script starts now.
    Ready { uptime: f64 },
    /// A check started; its output follows.
    Begin { name: String },
    /// A check ended.
    Check(Check),
    /// The guest waits until the host releases barrier `name`: at once for a lone VM, in a
    /// [`Cluster`](super::Cluster) once every guest waits there. `/init` waits at `exit` after
    /// the script, so no guest powers off while a peer may still need it.
    Barrier { name: String },
    /// A measurement or fact the script wants the test to see.
    Value { name: String, value: String },
    /// `/init` could not prepare the guest (a module would not load, 9p would not mount).
    Fatal { what: String },
    /// The script finished with this exit code; the guest powers off next.
    Exit { code: i32, uptime: f64 },
    /// A marked line that is not valid protocol: kept so the test fails instead of missing it.
    #[serde(skip)]
    Unparsed { text: String, error: String },
}

/// The result of one `mnvm_check NAME COMMAND...` in a guest script.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub exit: i32,
    /// Console lines between the check's `begin` and its result.
    #[serde(skip)]
    pub output: Vec<String>,
}

/// Turns console lines into protocol lines as they arrive.
#[derive(Debug, Default)]
pub(crate) struct Transcript {
    lines: Vec<GuestLine>,
    /// Output collected for the check that has begun and not yet ended.
    open_check: Option<(String, Vec<String>)>,
}

impl Transcript {
    /// Takes in one console line; returns the protocol event it carried, if any.
    pub(crate) fn feed(&mut self, at: Duration, line: &str) -> Option<&GuestEvent> {
        let Some(start) = line.find(MARKER) else {
            if let Some((_, output)) = &mut self.open_check {
                output.push(line.to_owned());
            }
            return None;
        };
        let json = line[start + MARKER.len()..].trim();
        let event = match serde_json::from_str::<GuestEvent>(json) {
            Ok(GuestEvent::Begin { name }) => {
                self.open_check = Some((name.clone(), Vec::new()));
                GuestEvent::Begin { name }
            }
            Ok(GuestEvent::Check(mut check)) => {
                if let Some((name, output)) = self.open_check.take()
                    && name == check.name
                {
                    check.output = output;
                }
                GuestEvent::Check(check)
            }
            Ok(other) => other,
            Err(error) => GuestEvent::Unparsed {
                text: line.to_owned(),
                error: error.to_string(),
            },
        };
        self.lines.push(GuestLine { at, event });
        self.lines.last().map(|line| &line.event)
    }

    pub(crate) fn lines(&self) -> &[GuestLine] {
        &self.lines
    }

    pub(crate) fn into_lines(self) -> Vec<GuestLine> {
        self.lines
    }
}

/// The last `count` lines of a console log, for error messages.
pub fn tail(console: &str, count: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(console: &[&str]) -> Vec<GuestEvent> {
        let mut transcript = Transcript::default();
        for (i, line) in console.iter().enumerate() {
            transcript.feed(Duration::from_millis(i as u64), line);
        }
        transcript
            .into_lines()
            .into_iter()
            .map(|l| l.event)
            .collect()
    }

    #[test]
    fn a_check_collects_the_output_printed_between_begin_and_result() {
        let events = transcript(&[
            "booting",
            r#"MNVM {"event":"ready","uptime":2.5}"#,
            r#"MNVM {"event":"begin","name":"vrf"}"#,
            "3: vrf-test: <NOARP,MASTER>",
            "    vrf table 10",
            r#"MNVM {"event":"check","name":"vrf","ok":true,"exit":0}"#,
            "after",
            r#"MNVM {"event":"exit","code":0,"uptime":3.1}"#,
        ]);
        assert_eq!(
            events,
            vec![
                GuestEvent::Ready { uptime: 2.5 },
                GuestEvent::Begin { name: "vrf".into() },
                GuestEvent::Check(Check {
                    name: "vrf".into(),
                    ok: true,
                    exit: 0,
                    output: vec![
                        "3: vrf-test: <NOARP,MASTER>".into(),
                        "    vrf table 10".into()
                    ],
                }),
                GuestEvent::Exit {
                    code: 0,
                    uptime: 3.1
                },
            ]
        );
    }

    #[test]
    fn a_marker_after_a_kernel_message_is_still_found() {
        let events = transcript(&[
            r#"[    2.9] virtio_net: fooMNVM {"event":"value","name":"rtt","value":"1.5"}"#,
        ]);
        assert_eq!(
            events,
            vec![GuestEvent::Value {
                name: "rtt".into(),
                value: "1.5".into()
            }]
        );
    }

    #[test]
    fn a_malformed_line_is_kept_as_unparsed() {
        let events = transcript(&[r#"MNVM {"event":"check","name":"x"}"#]);
        assert!(
            matches!(&events[..], [GuestEvent::Unparsed { text, .. }] if text.contains("check"))
        );
    }

    #[test]
    fn the_tail_is_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
