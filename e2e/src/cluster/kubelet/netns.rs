//! Network namespaces for pods: made and removed with `ip netns`, entered by short-lived
//! threads (a socket stays in the namespace it was made in), and the API forwarder that
//! stands in for kube-proxy's `kubernetes` Service inside each of them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;

/// Creates namespace `name` (replacing a stale one) with its loopback up.
pub(super) fn add(name: &str) -> io::Result<()> {
    let _ = ip(&["netns", "del", name]);
    ip(&["netns", "add", name])?;
    loopback_up(name)
}

pub(super) fn loopback_up(name: &str) -> io::Result<()> {
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes namespace `name`; its sockets go with their last user.
pub(super) fn delete(name: &str) -> io::Result<()> {
    ip(&["netns", "del", name])
}

pub(super) fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        stderr.trim()
    )))
}

/// Runs `f` on a new thread inside network namespace `name` and waits for it. The thread
/// ends with `f`, so no thread of the process is left in another namespace.
pub(crate) fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = Path::new("/run/netns").join(name);
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("a thread inside a network namespace panicked"))?
}

/// [`run_in`] from async code, without blocking a runtime thread on it.
pub(super) async fn run_in_async<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || run_in(&name, f))
        .await
        .map_err(io::Error::other)?
}

/// A listener on 127.0.0.1 at a free port inside namespace `name`.
pub(super) fn bind_loopback(name: &str) -> io::Result<TcpListener> {
    run_in(name, || {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// Accepts on `listener` (inside a pod's namespace) and joins each connection to `api` from
/// the root namespace, bytes copied both ways, until the task is aborted. Must run inside
/// the runtime's context.
pub(crate) fn forward(
    listener: TcpListener,
    api: SocketAddr,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inside, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outside) = tokio::net::TcpStream::connect(api).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    }))
}

/// A TCP connect to `addr` from the current namespace, as kubelet's tcpSocket probe.
pub(super) fn tcp_check(addr: SocketAddr, timeout: Duration) -> io::Result<bool> {
    TcpStream::connect_timeout(&addr, timeout).map(|_| true)
}

/// An HTTP/1.0 GET from inside the current namespace, as kubelet's prober: a status from 200
/// to 399 is a success.
pub(super) fn http_check(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = (line.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {line:?}")))?;
    Ok((200..400).contains(&code))
}
