//! Starts qemu for one guest and streams its serial console back, line by line.
//!
//! Always TCG: KVM exists on the build machines but hangs guests. One vCPU, because the
//! machines have two cores and other builds share them. `-nodefaults` drops the default NIC and
//! VGA; `romfile=` skips the NICs' PXE ROMs and qboot replaces SeaBIOS, both only cost boot time
//! for a guest booted with `-kernel`. `-no-reboot` plus `panic=-1` turn a guest panic into qemu
//! exiting, so a broken guest ends at once instead of at the timeout.
//!
//! NICs are qemu UDP sockets on 127.0.0.1 (`-netdev socket,udp=PEER,localaddr=OWN`): each end
//! binds its own port and sends to its peer's, so neither VM has to start first (a TCP
//! `listen=`/`connect=` pair would need the listener up before the connector starts), and
//! nothing reaches beyond the loopback interface.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::VmError;

pub(crate) const QEMU: &str = "qemu-system-x86_64";

/// One virtio NIC joined to its peer over two loopback UDP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NicPorts {
    pub mac: String,
    pub own_port: u16,
    pub peer_port: u16,
}

/// Everything qemu's command line is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub memory_mb: u32,
    pub nics: Vec<NicPorts>,
}

impl Launch<'_> {
    pub(crate) fn arguments(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-bios",
            "qboot.rom",
        ]
        .map(String::from)
        .into();
        args.extend([
            "-m".into(),
            self.memory_mb.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            // loglevel=3: kernel warnings would interleave with the script's lines.
            "console=ttyS0 panic=-1 quiet loglevel=3".into(),
            // The host's root, read-only; multidevs=remap keeps inode numbers unique across
            // the host's several filesystems.
            "-fsdev".into(),
            "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap".into(),
            "-device".into(),
            "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot".into(),
        ]);
        for (i, nic) in self.nics.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!(
                    "socket,id=nic{i},udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                    nic.peer_port, nic.own_port
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=nic{i},mac={},romfile=", nic.mac),
            ]);
        }
        args
    }
}

/// A running qemu: its console lines arrive on a channel, stamped with the time since start.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    started: Instant,
    lines: Receiver<(Duration, String)>,
    stderr: Option<JoinHandle<String>>,
}

/// What a bounded wait for console lines found.
#[derive(Debug)]
pub(crate) enum Poll {
    Line(Duration, String),
    /// Nothing within the wait.
    Quiet,
    /// qemu closed the console: it has exited or is exiting.
    Closed,
}

impl Process {
    pub(crate) fn spawn(launch: &Launch<'_>) -> Result<Self, VmError> {
        let mut child = Command::new(QEMU)
            .args(launch.arguments())
            // The serial port's input: how the host releases a guest waiting at a barrier.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| VmError::tool(QEMU, error))?;
        let started = Instant::now();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                if sender.send((started.elapsed(), text)).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Self {
            child,
            stdin,
            started,
            lines,
            stderr: Some(stderr),
        })
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Types a line on the guest's serial console. A guest that is gone shows up as a closed
    /// console at the next poll, so a failed write is not an error here.
    pub(crate) fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    pub(crate) fn poll(&self, wait: Duration) -> Poll {
        match self.lines.recv_timeout(wait) {
            Ok((at, line)) => Poll::Line(at, line),
            Err(RecvTimeoutError::Timeout) => Poll::Quiet,
            Err(RecvTimeoutError::Disconnected) => Poll::Closed,
        }
    }

    /// Reaps qemu after it closed its console, returning its status and what it said on stderr.
    pub(crate) fn reap(&mut self) -> Result<(ExitStatus, String), VmError> {
        let status = self.child.wait().map_err(|source| VmError::Io {
            path: QEMU.into(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        Ok((status, stderr))
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    /// A test that panics or returns early must not leave qemu running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// `count` distinct UDP ports on 127.0.0.1, free at the time of asking: all are held until all
/// are found, so none is handed out twice. qemu binds them moments later; another process taking
/// one in between makes qemu fail to start, which the test reports.
pub(crate) fn free_udp_ports(count: usize) -> Result<Vec<u16>, VmError> {
    let sockets = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| VmError::Io {
            path: "udp socket on 127.0.0.1".into(),
            source,
        })?;
    sockets
        .iter()
        .map(|socket| socket.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| VmError::Io {
            path: "udp socket on 127.0.0.1".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_are_loopback_udp_sockets_with_the_given_macs() {
        let launch = Launch {
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            memory_mb: 256,
            nics: vec![NicPorts {
                mac: "52:54:00:4d:01:00".into(),
                own_port: 4000,
                peer_port: 4001,
            }],
        };
        let args = launch.arguments().join(" ");
        assert!(args.contains("-accel tcg"));
        assert!(!args.contains("kvm"));
        assert!(args.contains("-m 256"));
        assert!(args.contains(
            "-netdev socket,id=nic0,udp=127.0.0.1:4001,localaddr=127.0.0.1:4000 \
             -device virtio-net-pci,netdev=nic0,mac=52:54:00:4d:01:00,romfile="
        ));
    }
}
