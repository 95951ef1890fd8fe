//! Reading and writing the networking sysctls a network needs. What they held before is
//! remembered in [`crate::state`], so that deleting the network puts them back.

use crate::error::SysctlError;
use std::io;
use std::path::PathBuf;

fn proc_path(path: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(path)
}

/// Current value, trimmed; `None` when the sysctl does not exist (interface absent, or a
/// kernel without it).
pub fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(proc_path(path))
        .ok()
        .map(|s| s.trim().to_owned())
}

pub fn write(path: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(path), value).map_err(|source| SysctlError {
        what: "writing",
        path: path.into(),
        source,
    })
}

/// The netlink form of an IPv4 per-interface sysctl: (interface, IPV4_DEVCONF index).
///
/// Containers that are not privileged see /proc/sys read-only, yet CAP_NET_ADMIN may still
/// change an interface's IPv4 settings over rtnetlink (RTM_SETLINK, IFLA_AF_SPEC/AF_INET/
/// IFLA_INET_CONF). These are the ones mirrornet sets; the indices are linux/ip.h's.
pub fn ipv4_devconf(path: &str) -> Option<(&str, u16)> {
    let rest = path.strip_prefix("net/ipv4/conf/")?;
    let (interface, key) = rest.split_once('/')?;
    if interface == "all" || interface == "default" {
        return None;
    }
    let index = match key {
        "forwarding" => 1,
        "rp_filter" => 8,
        "src_valid_mark" => 24,
        _ => return None,
    };
    Some((interface, index))
}

/// The link and family of a `net/ipv{4,6}/neigh/<link>/proxy_delay` path, which has a
/// netlink form ([`crate::netlink::Netlink::set_proxy_delay`]).
pub fn proxy_delay(path: &str) -> Option<(&str, bool)> {
    let (family, rest) = path.strip_prefix("net/")?.split_once("/neigh/")?;
    let interface = rest.strip_suffix("/proxy_delay")?;
    if interface == "default" || interface.contains('/') {
        return None;
    }
    match family {
        "ipv4" => Some((interface, false)),
        "ipv6" => Some((interface, true)),
        _ => None,
    }
}

/// Whether a failed write means "/proc/sys is read-only here".
pub fn is_read_only(e: &SysctlError) -> bool {
    e.source.raw_os_error() == Some(30) // EROFS
        || e.source.kind() == io::ErrorKind::ReadOnlyFilesystem
        || e.source.kind() == io::ErrorKind::PermissionDenied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_mirrornet_writes_have_a_netlink_form() {
        assert_eq!(
            ipv4_devconf("net/ipv4/conf/eth1/forwarding"),
            Some(("eth1", 1))
        );
        assert_eq!(
            ipv4_devconf("net/ipv4/conf/eth1/rp_filter"),
            Some(("eth1", 8))
        );
        assert_eq!(
            ipv4_devconf("net/ipv4/conf/eth1/src_valid_mark"),
            Some(("eth1", 24))
        );
        assert_eq!(ipv4_devconf("net/ipv4/conf/all/forwarding"), None);
        assert_eq!(ipv4_devconf("net/ipv6/conf/eth1/force_forwarding"), None);
    }
}
