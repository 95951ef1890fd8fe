//! Finds the kernel modules a guest needs, with their dependencies, in load order.
//!
//! Debian's kernel package ships no `modules.dep` (its postinst runs depmod on the installed
//! system), so dependencies are read from each module's own `.modinfo` section
//! (`depends=a,b`), which is what depmod reads too. Modules may be compressed (newer Debian
//! kernels ship `.ko.xz`); busybox `insmod` loads only plain ones, so they are decompressed here
//! on the host with the Debian tool for the format.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::VmError;

/// What every guest loads: the harness's own needs first, then what mirrornet's datapath uses.
///
/// `crc32c_generic` precedes `nf_tables` because nf_tables needs `libcrc32c`, whose only
/// dependency on a crc32c implementation is a soft one ("softdep pre: crc32c", an alias) that
/// `depends=` does not carry.
pub const GUEST_MODULES: &[&str] = &[
    // harness: NICs on the PCI bus and the host's root over virtio-9p
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    // datapath: VRF devices, veth/dummy/bridge for topologies inside one guest
    "vrf",
    "veth",
    "dummy",
    "bridge",
    // nftables with NAT, marks, conntrack zones, fib and reject; conntrack's netlink for the CLI
    "crc32c_generic",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_ct",
    "nft_masq",
    "nft_fib_inet",
    "nft_reject_inet",
    // named objects (`counter name x`), which tests use to watch foreign rules keep working
    "nft_objref",
    "nf_conntrack_netlink",
];

/// One module ready for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    /// Canonical name (underscores), as `lsmod` shows it.
    pub name: String,
    /// The uncompressed `.ko`.
    pub object: Vec<u8>,
}

/// Reads `wanted` and their dependencies from the unpacked `lib/modules/<release>` tree and
/// returns them in an order insmod accepts: every module after its dependencies. Modules built
/// into the kernel are skipped; a name that is neither built in nor shipped is an error.
pub(crate) fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, VmError> {
    let files = index(&modules_dir.join("kernel"))?;
    let builtin = builtin_names(modules_dir);
    let mut loaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let order = load_order(wanted, |name| {
        if builtin.contains(name) {
            return Ok(None);
        }
        let path = files.get(name).ok_or_else(|| VmError::ModuleMissing {
            module: name.to_owned(),
            dir: modules_dir.to_owned(),
        })?;
        let object = decompressed(path)?;
        let depends = modinfo_depends(&object);
        loaded.insert(name.to_owned(), object);
        Ok(Some(depends))
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let object = loaded
                .remove(&name)
                .expect("every ordered module was loaded");
            Module { name, object }
        })
        .collect())
}

/// A module's dependencies, or `None` for a module that needs no loading (built in).
type Dependencies<'a> = dyn FnMut(&str) -> Result<Option<Vec<String>>, VmError> + 'a;

/// Depth-first, dependencies first.
fn load_order(
    wanted: &[&str],
    mut deps: impl FnMut(&str) -> Result<Option<Vec<String>>, VmError>,
) -> Result<Vec<String>, VmError> {
    fn visit(
        name: &str,
        deps: &mut Dependencies<'_>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), VmError> {
        let name = canonical(name);
        if !seen.insert(name.clone()) {
            return Ok(());
        }
        if let Some(needs) = deps(&name)? {
            for dependency in &needs {
                visit(dependency, deps, seen, order)?;
            }
            order.push(name);
        }
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(name, &mut deps, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Module names treat `-` and `_` alike; the kernel reports underscores.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Canonical module name -> file, for every module the package ships.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, VmError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| VmError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = module_name(&path) {
                files.insert(name, path);
            }
        }
    }
    Ok(files)
}

/// `net/vrf.ko`, `vrf.ko.xz` -> `vrf`; anything else -> None.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    Some(canonical(stem))
}

/// Names listed in `modules.builtin` (paths like `kernel/net/ipv6/ipv6.ko`).
fn builtin_names(modules_dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| module_name(Path::new(line)))
        .collect()
}

fn decompressed(path: &Path) -> Result<Vec<u8>, VmError> {
    let file = path.to_string_lossy();
    let tool = if file.ends_with(".xz") {
        "xz"
    } else if file.ends_with(".zst") {
        "zstd"
    } else if file.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).map_err(|source| VmError::Io {
            path: path.into(),
            source,
        });
    };
    let output = std::process::Command::new(tool)
        .args(["-dc", &file])
        .output()
        .map_err(|error| VmError::tool(tool, error))?;
    if !output.status.success() {
        return Err(VmError::Command {
            command: format!("{tool} -dc {file}"),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-separated `key=value` strings.
fn modinfo_depends(object: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = object.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &object[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_is_read_from_modinfo() {
        let object =
            b"\x7fELF...\0license=GPL\0depends=nfnetlink,libcrc32c\0intree=Y\0name=nf_tables\0";
        assert_eq!(modinfo_depends(object), vec!["nfnetlink", "libcrc32c"]);
        assert!(modinfo_depends(b"\0depends=\0name=vrf\0").is_empty());
    }

    #[test]
    fn dependencies_come_first_and_builtins_are_skipped() {
        let graph: BTreeMap<&str, Option<Vec<&str>>> = BTreeMap::from([
            ("nft_chain_nat", Some(vec!["nf_tables", "nf_nat"])),
            ("nf_tables", Some(vec!["nfnetlink", "libcrc32c"])),
            ("nf_nat", Some(vec!["nf_conntrack"])),
            ("nf_conntrack", Some(vec!["nf_defrag_ipv4", "libcrc32c"])),
            ("nfnetlink", Some(vec![])),
            ("libcrc32c", Some(vec![])),
            ("nf_defrag_ipv4", Some(vec![])),
            ("ipv6", None),
        ]);
        let order = load_order(&["nft-chain-nat", "ipv6", "nf_tables"], |name| {
            Ok(graph[name]
                .as_ref()
                .map(|deps| deps.iter().map(|d| d.to_string()).collect()))
        })
        .unwrap();
        assert_eq!(
            order,
            vec![
                "nfnetlink",
                "libcrc32c",
                "nf_tables",
                "nf_defrag_ipv4",
                "nf_conntrack",
                "nf_nat",
                "nft_chain_nat"
            ]
        );
    }

    #[test]
    fn module_names_are_canonical_for_every_compression() {
        assert_eq!(
            module_name(Path::new("kernel/net/9p/9pnet-virtio.ko.xz")).as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name(Path::new("vrf.ko")).as_deref(), Some("vrf"));
        assert_eq!(module_name(Path::new("modules.dep")), None);
    }
}
