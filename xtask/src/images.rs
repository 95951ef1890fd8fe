//! `cargo xtask images`: the agent and operator images as OCI archives, built from this tree
//! without a container engine or a registry.
//!
//! ```text
//! Debian packages ──debootstrap / apt-get download──> base root filesystem (cached)
//!                                                         │ tar: layer 1
//! cargo build --release ──> mirrornet-agent / -operator ──┤ umoci insert: layer 2
//!                                                         │ umoci config: user, entrypoint
//!                                                         └──> target/images/<name>.oci.tar
//! ```
//!
//! The image tool is umoci (Debian's package): it works on an OCI image layout in a directory,
//! adds layers and edits the config, so nothing here writes image JSON or tar by hand. The
//! archive is that layout in a tar ("oci-archive"), which `ctr images import`, `skopeo copy
//! oci-archive:` and `podman load` all read.
//!
//! The Dockerfiles in `images/` describe the same two images for `docker build` users. What
//! keeps them equal is [`AGENT`] and [`OPERATOR`]: the tests below read both Dockerfiles and
//! fail when their base release, packages, copied binary, user, entrypoint or command differ
//! from these constants, and [`check`] reads the built archives back (config and file lists)
//! after every build.
//!
//! A base root filesystem is cached in `~/.cache/mirrornet/images/` (or `$MIRRORNET_CACHE`)
//! under a key made of the packages' candidate versions, so a second build only repacks the
//! binaries; a Debian point release builds a new base beside the old one.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the Debian packages come from: the mirror apt uses on the project's machines.
const MIRROR: &str = "http://deb.debian.org/debian";

/// How an image's base root filesystem is made.
#[derive(Debug)]
enum Base {
    /// `debootstrap --variant=minbase` of the release with these packages, then trimmed as
    /// Debian's `-slim` images are (no documentation, manuals, locales or apt lists).
    Debootstrap { packages: &'static [&'static str] },
    /// Only these packages' files (`dpkg-deb -x`, no maintainer scripts), the passwd and group
    /// files of distroless (root, and nonroot 65532), and no shell or other program: the
    /// contents of distroless `cc-debian12`, made from the same Debian packages.
    Distroless { packages: &'static [&'static str] },
    /// Nothing: the binary is the whole image (the test node's sandbox image).
    Scratch,
}

/// One image: everything both its builders (this module and its Dockerfile) must agree on.
#[derive(Debug)]
pub(crate) struct Image {
    /// The image (and the Cargo package and binary) name.
    pub(crate) name: &'static str,
    /// Its Dockerfile, relative to the workspace root.
    dockerfile: &'static str,
    /// The Debian release of the base, as Debian names it.
    release: &'static str,
    /// The final stage's `FROM` in the Dockerfile.
    docker_base: &'static str,
    base: Base,
    /// Where the binary goes in the image.
    binary_path: &'static str,
    /// `user:group`, numeric, as the Dockerfile's USER says (root when the Dockerfile has none).
    user: &'static str,
    entrypoint: &'static [&'static str],
    cmd: &'static [&'static str],
}

/// The agent: its binary and the `nft` userland it runs, on Debian 12 (nftables 1.0.6, the
/// version its nft syntax was measured against).
pub(crate) const AGENT: Image = Image {
    name: "mirrornet-agent",
    dockerfile: "images/agent.Dockerfile",
    release: "bookworm",
    docker_base: "docker.io/library/debian:bookworm-slim",
    base: Base::Debootstrap {
        packages: &["nftables"],
    },
    binary_path: "/usr/local/bin/mirrornet-agent",
    user: "0:0",
    entrypoint: &["/usr/local/bin/mirrornet-agent"],
    cmd: &["--help"],
};

/// The operator: its binary with glibc and nothing else that runs, as user 65532.
pub(crate) const OPERATOR: Image = Image {
    name: "mirrornet-operator",
    dockerfile: "images/operator.Dockerfile",
    release: "bookworm",
    docker_base: "gcr.io/distroless/cc-debian12:nonroot",
    // The packages distroless' cc-debian12 is made of.
    base: Base::Distroless {
        packages: &[
            "base-files",
            "netbase",
            "tzdata",
            "ca-certificates",
            "libc6",
            "libgcc-s1",
            "libgomp1",
            "libstdc++6",
            "libssl3",
        ],
    },
    binary_path: "/usr/local/bin/mirrornet-operator",
    user: "65532:65532",
    entrypoint: &["/usr/local/bin/mirrornet-operator"],
    cmd: &[],
};

/// The real test node's sandbox ("pause") image, which containerd cannot pull here: Kubernetes'
/// own `build/pause/linux/pause.c` from the `k8s.io/kubernetes` module e2e/k8s builds from,
/// linked statically, alone in the image as `registry.k8s.io/pause` has it. Test only.
pub(crate) const PAUSE: Image = Image {
    name: "pause",
    dockerfile: "",
    release: "bookworm",
    docker_base: "scratch",
    base: Base::Scratch,
    binary_path: "/pause",
    user: "65535:65535",
    entrypoint: &["/pause"],
    cmd: &[],
};

/// Builds [`PAUSE`] into `<target>/images/pause.oci.tar` from the pause.c of Kubernetes
/// `version` (e2e/k8s/versions.env), which `go mod download` fetches into Go's module cache.
pub(crate) fn build_pause(root: &Path, version: &str, tag: &str) -> Result<Built> {
    let module = format!("k8s.io/kubernetes@{version}");
    let dir = output("go", &["mod", "download", "-json", &module])?;
    let dir: Value = serde_json::from_str(&dir)?;
    let source = Path::new(dir["Dir"].as_str().context("go mod download gave no Dir")?)
        .join("build/pause/linux/pause.c");
    let out = target_dir(root).join("images");
    fs::create_dir_all(&out)?;
    let binary = out.join("pause.bin");
    output(
        "gcc",
        &[
            "-Os",
            "-static",
            "-Wall",
            &format!("-DVERSION={version}-mirrornet"),
            "-o",
            path_str(&binary)?,
            path_str(&source)?,
        ],
    )?;
    output("strip", &[path_str(&binary)?])?;
    let archive = out.join("pause.oci.tar");
    assemble(&PAUSE, Path::new(""), &binary, tag, &archive)?;
    check(&PAUSE, &archive, tag)?;
    let bytes = fs::metadata(&archive)?.len();
    Ok(Built {
        name: PAUSE.name,
        archive,
        bytes,
    })
}

/// An archive that was built, with what it weighs.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) name: &'static str,
    pub(crate) archive: PathBuf,
    pub(crate) bytes: u64,
}

/// Builds both images into `<target>/images/` and returns their archives. `tag` is the tag
/// recorded in each archive (`org.opencontainers.image.ref.name`).
pub(crate) fn build(root: &Path, tag: &str) -> Result<Vec<Built>> {
    let started = Instant::now();
    let release = release_target_dir();
    cargo_release(root, &release)?;
    let out = target_dir(root).join("images");
    fs::create_dir_all(&out)?;
    let mut built = Vec::new();
    for image in [&AGENT, &OPERATOR] {
        let base = base_rootfs(image)?;
        let binary = release.join("release").join(image.name);
        let archive = out.join(format!("{}.oci.tar", image.name));
        assemble(image, &base, &binary, tag, &archive)?;
        check(image, &archive, tag)?;
        let bytes = fs::metadata(&archive)?.len();
        eprintln!(
            "{}: {} ({:.1} MiB)",
            image.name,
            archive.display(),
            bytes as f64 / 1048576.0
        );
        built.push(Built {
            name: image.name,
            archive,
            bytes,
        });
    }
    eprintln!("images built in {:.0?}", started.elapsed());
    Ok(built)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MIRRORNET_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("mirrornet")
}

/// Where the release binaries are built: `CARGO_TARGET_DIR` when set, else a target
/// directory in the cache, outside the tree. A clean clone (what CI builds) then rebuilds
/// only the workspace's own crates in release, not every dependency: about 11 minutes of a
/// cold run on two cores.
fn release_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("target-release"))
}

/// The release binaries, built as the Dockerfiles' build stages build them.
fn cargo_release(root: &Path, target: &Path) -> Result<()> {
    let mut args = vec!["build", "--release", "--locked"];
    for image in [&AGENT, &OPERATOR] {
        args.extend(["--package", image.name, "--bin", image.name]);
    }
    super::run_with_env("cargo", &args, &[("CARGO_TARGET_DIR", target.as_os_str())])
        .context(format!("in {}", root.display()))
}

/// Runs a command quietly and returns its standard output; on failure, its standard error.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The candidate version apt would install, for the cache key.
fn candidate(package: &str) -> Result<String> {
    let show = output("apt-cache", &["show", "--no-all-versions", package])?;
    show.lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::to_owned)
        .with_context(|| format!("apt knows no version of {package}: run apt-get update"))
}

/// The image's base root filesystem, made once per set of package versions.
fn base_rootfs(image: &Image) -> Result<PathBuf> {
    let (kind, packages) = match image.base {
        Base::Debootstrap { packages } => ("debootstrap", packages),
        Base::Distroless { packages } => ("distroless", packages),
        Base::Scratch => bail!("{} has no base", image.name),
    };
    // libc6 stands for the release's point version in the key.
    let mut key = format!("{kind} {} libc6={}", image.release, candidate("libc6")?);
    for p in packages {
        write!(key, " {p}={}", candidate(p)?)?;
    }
    let hash = output("sh", &["-c", &format!("printf %s '{key}' | sha256sum")])?;
    let dir = cache_dir()
        .join("images")
        .join(format!("{}-base-{}", image.name, &hash[..12]));
    let rootfs = dir.join("rootfs");
    if dir.join(".complete").exists() {
        return Ok(rootfs);
    }
    let started = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&rootfs)?;
    match image.base {
        Base::Debootstrap { packages } => debootstrap(image.release, packages, &rootfs)?,
        Base::Distroless { packages } => distroless(packages, &dir, &rootfs)?,
        Base::Scratch => {}
    }
    fs::write(dir.join("key"), &key)?;
    fs::write(dir.join(".complete"), "")?;
    eprintln!(
        "{} base made in {:.0?} ({key})",
        image.name,
        started.elapsed()
    );
    Ok(rootfs)
}

fn debootstrap(release: &str, packages: &[&str], rootfs: &Path) -> Result<()> {
    let include = format!("--include={}", packages.join(","));
    let rootfs = rootfs.to_str().context("cache path is not UTF-8")?;
    super::run(
        "debootstrap",
        &["--variant=minbase", &include, release, rootfs, MIRROR],
    )?;
    // What Debian's -slim images leave out (debuerreotype's slimify), and apt's state.
    let trim = "cd \"$1\" && rm -rf usr/share/doc/* usr/share/man/* usr/share/info/* \
                usr/share/locale/* usr/share/lintian var/lib/apt/lists/* var/cache/apt/* \
                var/cache/debconf/*-old var/log/* dev/* && mkdir -p var/lib/apt/lists/partial";
    output("sh", &["-c", trim, "trim", rootfs])?;
    Ok(())
}

fn distroless(packages: &[&str], dir: &Path, rootfs: &Path) -> Result<()> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let status = Command::new("apt-get")
        .arg("download")
        .args(packages)
        .current_dir(&debs)
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("apt-get download {} failed", packages.join(" "));
    }
    for deb in fs::read_dir(&debs)? {
        let deb = deb?.path();
        output("dpkg-deb", &["-x", path_str(&deb)?, path_str(rootfs)?])?;
    }
    // No maintainer scripts ran: make what ca-certificates' would, the one bundle. Then drop
    // every program (libc6's ldd is a shell script, base-files brings none that run without a
    // shell) and what only people read, as distroless does.
    let finish = "cd \"$1\" && mkdir -p etc/ssl/certs tmp home/nonroot root && chmod 1777 tmp \
                  && chown 65532:65532 home/nonroot && chmod 700 root \
                  && find usr/share/ca-certificates -name '*.crt' | sort | xargs cat \
                     > etc/ssl/certs/ca-certificates.crt \
                  && rm -rf bin sbin usr/bin usr/sbin usr/libexec usr/share/doc/* usr/share/man \
                     usr/share/info usr/share/locale usr/share/lintian usr/share/gcc \
                     usr/share/gdb etc/init.d etc/update-motd.d";
    output("sh", &["-c", finish, "finish", path_str(rootfs)?])?;
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n",
    )?;
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The image in two layers, as the Dockerfile's final stage makes it: the base, then the
/// binary; then the config.
fn assemble(image: &Image, base: &Path, binary: &Path, tag: &str, archive: &Path) -> Result<()> {
    let work = archive.with_extension("work");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let layout = work.join("layout");
    let layer = work.join("base.tar");
    let reference = format!("{}:{tag}", path_str(&layout)?);
    output("umoci", &["init", "--layout", path_str(&layout)?])?;
    output("umoci", &["new", "--image", &reference])?;
    if !matches!(image.base, Base::Scratch) {
        output(
            "tar",
            &[
                "--numeric-owner",
                "--sort=name",
                "-C",
                path_str(base)?,
                "-cf",
                path_str(&layer)?,
                ".",
            ],
        )?;
        output(
            "umoci",
            &[
                "raw",
                "add-layer",
                "--image",
                &reference,
                "--history.created_by",
                &format!(
                    "base {} as {} describes it: {:?}",
                    image.docker_base, image.dockerfile, image.base
                ),
                path_str(&layer)?,
            ],
        )?;
    }
    // The binary's layer is a directory tree made here and packed by tar, like the base:
    // umoci 0.4.7's `insert` writes a layer tar without its padding and end blocks.
    let tree = work.join("binary");
    let dest = tree.join(image.binary_path.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().context("binary path has a directory")?)?;
    fs::copy(binary, &dest).with_context(|| format!("copying {}", binary.display()))?;
    let binary_layer = work.join("binary.tar");
    output(
        "tar",
        &[
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            path_str(&tree)?,
            "-cf",
            path_str(&binary_layer)?,
            image.binary_path.trim_start_matches('/'),
        ],
    )?;
    output(
        "umoci",
        &[
            "raw",
            "add-layer",
            "--image",
            &reference,
            "--history.created_by",
            &format!("COPY {} {}", image.name, image.binary_path),
            path_str(&binary_layer)?,
        ],
    )?;
    let mut config = vec![
        "config".to_owned(),
        "--image".to_owned(),
        reference.clone(),
        "--config.user".to_owned(),
        image.user.to_owned(),
        "--config.workingdir".to_owned(),
        "/".to_owned(),
        "--clear=config.entrypoint".to_owned(),
        "--clear=config.cmd".to_owned(),
        "--clear=config.env".to_owned(),
        "--config.env".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ];
    for arg in image.entrypoint {
        config.extend(["--config.entrypoint".to_owned(), (*arg).to_owned()]);
    }
    for arg in image.cmd {
        config.extend(["--config.cmd".to_owned(), (*arg).to_owned()]);
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    output("umoci", &config)?;
    output("umoci", &["gc", "--layout", path_str(&layout)?])?;
    output(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            path_str(&layout)?,
            "-cf",
            path_str(archive)?,
            ".",
        ],
    )?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// Reads a built archive back and checks what the Dockerfile promises: the config's user,
/// entrypoint and command, the binary, and for the agent `nft`, for the operator no shell.
fn check(image: &Image, archive: &Path, tag: &str) -> Result<()> {
    let work = archive.with_extension("check");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    output("tar", &["-C", path_str(&work)?, "-xf", path_str(archive)?])?;
    let blob = |digest: &str| -> Result<Value> {
        let (algo, hex) = digest.split_once(':').context("digest without algorithm")?;
        let path = work.join("blobs").join(algo).join(hex);
        Ok(serde_json::from_slice(&fs::read(&path)?)?)
    };
    let index: Value = serde_json::from_slice(&fs::read(work.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            })
        })
        .with_context(|| format!("{}: no manifest tagged {tag}", image.name))?;
    let manifest = blob(manifest["digest"].as_str().context("manifest digest")?)?;
    let config = blob(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    )?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let c = &config["config"];
    let mut problems = Vec::new();
    if c["User"].as_str() != Some(image.user) {
        problems.push(format!("user {} (want {})", c["User"], image.user));
    }
    if strings(&c["Entrypoint"]) != image.entrypoint {
        problems.push(format!("entrypoint {}", c["Entrypoint"]));
    }
    if strings(&c["Cmd"]) != image.cmd {
        problems.push(format!("cmd {}", c["Cmd"]));
    }
    let mut files = BTreeSet::new();
    for layer in manifest["layers"].as_array().context("layers")? {
        let digest = layer["digest"].as_str().context("layer digest")?;
        let (algo, hex) = digest.split_once(':').context("digest without algorithm")?;
        let list = output(
            "tar",
            &["-tzf", path_str(&work.join("blobs").join(algo).join(hex))?],
        )?;
        files.extend(
            list.lines()
                .map(|l| format!("/{}", l.trim_start_matches("./").trim_end_matches('/'))),
        );
    }
    let mut must = vec![image.binary_path];
    let mut must_not: Vec<&str> = Vec::new();
    match image.base {
        Base::Debootstrap { .. } => must.extend(["/usr/sbin/nft"]),
        Base::Distroless { .. } => {
            must.extend(["/etc/passwd", "/etc/ssl/certs/ca-certificates.crt"]);
            must_not.extend(["/bin", "/usr/bin/sh", "/usr/bin/dash", "/usr/bin/bash"]);
        }
        Base::Scratch => {}
    }
    for path in must {
        if !files.contains(path) {
            problems.push(format!("{path} missing"));
        }
    }
    for path in must_not {
        if files.contains(path) {
            problems.push(format!("{path} present"));
        }
    }
    fs::remove_dir_all(&work)?;
    if !problems.is_empty() {
        bail!(
            "{} ({}): {}",
            image.name,
            archive.display(),
            problems.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The Dockerfiles and this module describe the same images: each test reads a Dockerfile
    //! and compares its final stage with the constants the OCI build uses.
    use super::*;

    /// The final stage of a Dockerfile, instruction by instruction (continuations joined).
    fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = fs::read_to_string(root.join(dockerfile)).unwrap();
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(line);
                    let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                    instructions.push((op.to_uppercase(), rest.trim().to_owned()));
                    current.clear();
                }
            }
        }
        let last_from = instructions
            .iter()
            .rposition(|(op, _)| op == "FROM")
            .unwrap();
        instructions.split_off(last_from)
    }

    fn exec_form(value: &str) -> Vec<String> {
        serde_json::from_str(value).unwrap()
    }

    fn agree(image: &Image) {
        let stage = final_stage(image.dockerfile);
        assert_eq!(stage[0].1, image.docker_base, "{}: base", image.dockerfile);
        let codename = match image.release {
            "bookworm" => ["bookworm", "debian12"],
            other => panic!("release {other} has no distroless name here"),
        };
        assert!(
            codename.iter().any(|c| image.docker_base.contains(c)),
            "{}: base {} is not Debian {}",
            image.dockerfile,
            image.docker_base,
            image.release
        );
        let find = |op: &str| stage.iter().find(|(o, _)| o == op).map(|(_, v)| v.clone());
        let copy = find("COPY").expect("a COPY of the binary");
        assert!(
            copy.ends_with(&format!("/{} {}", image.name, image.binary_path)),
            "{}: COPY {copy}",
            image.dockerfile
        );
        assert_eq!(
            find("USER").unwrap_or_else(|| "0:0".to_owned()),
            image.user,
            "{}: USER",
            image.dockerfile
        );
        assert_eq!(
            exec_form(&find("ENTRYPOINT").unwrap()),
            image.entrypoint,
            "{}: ENTRYPOINT",
            image.dockerfile
        );
        assert_eq!(
            find("CMD").map(|c| exec_form(&c)).unwrap_or_default(),
            image.cmd,
            "{}: CMD",
            image.dockerfile
        );
        let installed: Vec<String> = stage
            .iter()
            .filter(|(op, _)| op == "RUN")
            .flat_map(|(_, run)| {
                run.split("&&")
                    .filter_map(|c| c.split_once("apt-get install").map(|(_, a)| a.to_owned()))
                    .collect::<Vec<_>>()
            })
            .flat_map(|args| {
                args.split_whitespace()
                    .filter(|a| !a.starts_with('-'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        match image.base {
            Base::Debootstrap { packages } => {
                assert_eq!(installed, packages, "{}: apt-get install", image.dockerfile)
            }
            Base::Scratch => panic!("{} has no Dockerfile", image.name),
            Base::Distroless { .. } => {
                assert!(
                    installed.is_empty(),
                    "{}: installs {installed:?}",
                    image.dockerfile
                );
                assert!(image.docker_base.contains("distroless/cc-"));
            }
        }
    }

    #[test]
    fn the_agent_dockerfile_describes_the_agent_image() {
        agree(&AGENT);
    }

    #[test]
    fn the_operator_dockerfile_describes_the_operator_image() {
        agree(&OPERATOR);
        assert_eq!(
            OPERATOR.user, "65532:65532",
            "the chart's restricted context"
        );
    }
}
