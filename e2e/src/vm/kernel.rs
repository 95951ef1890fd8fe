//! Fetches Debian's stock kernel and busybox with apt and keeps them unpacked in a cache.
//!
//! The build machines' own kernel has no VRF, so VM tests boot the kernel a Debian user would
//! run: whatever `linux-image-amd64` currently depends on. Packages are downloaded with
//! `apt-get download` (no installation, the host stays as it is) and unpacked with
//! `dpkg-deb -x` into `<cargo target dir>/vm-cache/<package>/`, so later runs are offline and take
//! milliseconds. Unpacking goes to a temporary directory renamed into place, under a file lock,
//! so concurrent test binaries neither race nor see half a tree.
//!
//! qemu boots the kernel uncompressed: the ELF `vmlinux` inside Debian's bzImage, unpacked once
//! on the host, entered through its PVH note. Under TCG the guest's own xz decompressor is slow;
//! skipping it halves a boot (measured: 6.1 s -> 3.1 s from qemu's start to power-off).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::VmError;

/// The meta package that names the current stock kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// Statically linked, so it runs in the initramfs before any library is reachable.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A stock kernel unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel release, e.g. `6.1.0-56-amd64`: the directory name under `/lib/modules`.
    pub release: String,
    /// The image qemu boots with `-kernel`: the uncompressed ELF kernel, or the bzImage when
    /// no ELF kernel could be found inside it.
    pub image: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel `linux-image-amd64` depends on, downloaded and unpacked on first use.
    pub fn stock() -> Result<Self, VmError> {
        let cache = cache_dir()?;
        let mut package = stock_kernel_package(&cache)?;
        let root = match unpacked(&cache, &package) {
            Ok(root) => root,
            Err(VmError::Command { .. }) => {
                // Stale package lists name a kernel the mirror no longer has: refresh them and
                // ask again (the answer may be a newer kernel).
                run("apt-get", &["update", "-qq"], None)?;
                package = stock_kernel_package(&cache)?;
                unpacked(&cache, &package)?
            }
            Err(error) => return Err(error),
        };
        let release = package
            .strip_prefix("linux-image-")
            .expect("the package name was checked to start with linux-image-")
            .to_owned();
        let bzimage = root.join("boot").join(format!("vmlinuz-{release}"));
        let modules = root.join("lib/modules").join(&release);
        for path in [&bzimage, &modules] {
            if !path.exists() {
                return Err(VmError::Package {
                    package,
                    detail: format!("{} is missing from the unpacked package", path.display()),
                });
            }
        }
        let image = uncompressed(&bzimage)?.unwrap_or(bzimage);
        Ok(Self {
            release,
            image,
            modules,
        })
    }
}

/// `vmlinux` beside the bzImage, extracted on first use; `None` when the bzImage holds no
/// payload in a format we know, so the caller boots the bzImage itself (slower, still correct).
fn uncompressed(bzimage: &Path) -> Result<Option<PathBuf>, VmError> {
    let vmlinux = bzimage.with_file_name("vmlinux");
    if vmlinux.is_file() {
        return Ok(Some(vmlinux));
    }
    let image = fs::read(bzimage).map_err(|source| VmError::Io {
        path: bzimage.into(),
        source,
    })?;
    let Some(elf) = payload(&image)? else {
        return Ok(None);
    };
    // Unique per thread too: tests of one process boot VMs in parallel on a cold cache.
    static PARTIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PARTIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = bzimage.with_file_name(format!("vmlinux.{}.{n}", std::process::id()));
    fs::write(&partial, elf).map_err(|source| VmError::Io {
        path: partial.clone(),
        source,
    })?;
    // Renaming is atomic, so a concurrent extraction can only replace it with the same bytes.
    fs::rename(&partial, &vmlinux).map_err(|source| VmError::Io {
        path: vmlinux.clone(),
        source,
    })?;
    Ok(Some(vmlinux))
}

/// Finds the compressed kernel in a bzImage by its format's magic and decompresses it with the
/// Debian tool for that format. The payload is followed by more of the bzImage, so the tools'
/// complaints about trailing data are expected: the result counts when it is an ELF file.
fn payload(image: &[u8]) -> Result<Option<Vec<u8>>, VmError> {
    const FORMATS: &[(&[u8], &str, &[&str])] = &[
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    for (magic, tool, args) in FORMATS {
        let Some(start) = image.windows(magic.len()).position(|w| w == *magic) else {
            continue;
        };
        let mut child = Command::new(tool)
            .args(*args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| VmError::tool(tool, error))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let compressed = image[start..].to_vec();
        let writer = std::thread::spawn(move || {
            // The tool may stop reading at the end of its stream: a broken pipe is fine.
            let _ = stdin.write_all(&compressed);
        });
        let output = child.wait_with_output().map_err(|source| VmError::Io {
            path: tool.into(),
            source,
        })?;
        let _ = writer.join();
        if output.stdout.starts_with(b"\x7fELF") {
            return Ok(Some(output.stdout));
        }
    }
    Ok(None)
}

/// The static busybox binary from `busybox-static`, unpacked in the cache.
pub fn busybox() -> Result<PathBuf, VmError> {
    let root = unpacked(&cache_dir()?, BUSYBOX_PACKAGE)?;
    let binary = root.join("bin/busybox");
    if !binary.exists() {
        return Err(VmError::Package {
            package: BUSYBOX_PACKAGE.into(),
            detail: "bin/busybox is missing from the unpacked package".into(),
        });
    }
    Ok(binary)
}

/// Where downloaded packages and per-run files live: `$MIRRORNET_VM_CACHE`, else
/// `$CARGO_TARGET_DIR/vm-cache`, else `vm-cache` in the target directory holding the running test
/// binary (recognised by the `CACHEDIR.TAG` cargo writes there), so `cargo clean` removes it.
pub fn cache_dir() -> Result<PathBuf, VmError> {
    let dir = if let Some(dir) = std::env::var_os("MIRRORNET_VM_CACHE") {
        PathBuf::from(dir)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("vm-cache")
    } else {
        let exe = std::env::current_exe().map_err(|source| VmError::Io {
            path: "/proc/self/exe".into(),
            source,
        })?;
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .ok_or(VmError::NoCacheDir { exe: exe.clone() })?
            .join("vm-cache")
    };
    fs::create_dir_all(&dir).map_err(|source| VmError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Asks apt which versioned kernel package the meta package stands for today. The answer comes
/// from the local package lists, so it is offline; lists missing on a fresh machine are fetched
/// once with `apt-get update`. apt-cache takes most of a second, so the answer is remembered in
/// the cache for as long as the package lists stay unchanged.
fn stock_kernel_package(cache: &Path) -> Result<String, VmError> {
    let memo = cache.join("stock-kernel");
    let lists = lists_version();
    if let Some(package) = fs::read_to_string(&memo).ok().and_then(|memo| {
        let (version, package) = memo.trim().split_once(' ')?;
        (Some(version) == lists.as_deref()).then(|| package.to_owned())
    }) {
        return Ok(package);
    }
    let package = query_stock_kernel_package()?;
    if let Some(lists) = lists_version() {
        let _ = fs::write(&memo, format!("{lists} {package}\n"));
    }
    Ok(package)
}

/// Changes whenever `apt-get update` replaces a package list (it renames files into place).
fn lists_version() -> Option<String> {
    let modified = fs::metadata("/var/lib/apt/lists").ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since.as_nanos().to_string())
}

fn query_stock_kernel_package() -> Result<String, VmError> {
    let query = || run("apt-cache", &["depends", KERNEL_META_PACKAGE], None);
    let answer = match query() {
        Ok(out) if kernel_dependency(&out).is_some() => out,
        _ => {
            run("apt-get", &["update", "-qq"], None)?;
            query()?
        }
    };
    kernel_dependency(&answer).ok_or_else(|| VmError::Package {
        package: KERNEL_META_PACKAGE.into(),
        detail: format!("apt-cache names no linux-image-* dependency:\n{answer}"),
    })
}

/// Picks `linux-image-<release>` out of `apt-cache depends linux-image-amd64`.
fn kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let package = line.trim().strip_prefix("Depends:")?.trim();
        let package = package.trim_start_matches('<').trim_end_matches('>');
        (package.starts_with("linux-image-") && package != KERNEL_META_PACKAGE)
            .then(|| package.to_owned())
    })
}

/// The unpacked tree of `package` in the cache, downloading and unpacking it if needed.
fn unpacked(cache: &Path, package: &str) -> Result<PathBuf, VmError> {
    let root = cache.join(package);
    if root.is_dir() {
        return Ok(root);
    }
    let lock_path = cache.join(format!("{package}.lock"));
    let lock = fs::File::create(&lock_path).map_err(|source| VmError::Io {
        path: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| VmError::Io {
        path: lock_path,
        source,
    })?;
    if root.is_dir() {
        // Another process unpacked it while this one waited for the lock.
        return Ok(root);
    }
    let work = cache.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&work);
    let download = work.join("download");
    fs::create_dir_all(&download).map_err(|source| VmError::Io {
        path: download.clone(),
        source,
    })?;
    run("apt-get", &["download", "-qq", package], Some(&download))?;
    let deb = deb_in(&download, package)?;
    let tree = work.join("tree");
    run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &tree.to_string_lossy()],
        None,
    )?;
    fs::rename(&tree, &root).map_err(|source| VmError::Io {
        path: root.clone(),
        source,
    })?;
    let _ = fs::remove_dir_all(&work);
    Ok(root)
}

/// The one `.deb` apt-get downloaded (its file name carries a URL-encoded version).
fn deb_in(dir: &Path, package: &str) -> Result<PathBuf, VmError> {
    let entries = fs::read_dir(dir).map_err(|source| VmError::Io {
        path: dir.into(),
        source,
    })?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
        .ok_or_else(|| VmError::Package {
            package: package.into(),
            detail: format!("apt-get download left no .deb in {}", dir.display()),
        })
}

/// Runs a host tool and returns its stdout, mapping a missing tool to the package that ships it.
pub(crate) fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, VmError> {
    let mut command = Command::new(program);
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command
        .output()
        .map_err(|error| VmError::tool(program, error))?;
    if !output.status.success() {
        return Err(VmError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_package_is_read_from_apt_cache_depends() {
        let bookworm = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            kernel_dependency(bookworm).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        let trixie = "linux-image-amd64\n  Depends: linux-image-6.12.48+deb13-amd64\n  Recommends: apparmor\n";
        assert_eq!(
            kernel_dependency(trixie).as_deref(),
            Some("linux-image-6.12.48+deb13-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-amd64\n"), None);
    }
}
