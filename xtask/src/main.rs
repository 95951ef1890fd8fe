//! Project automation: `cargo xtask <command>` (the usual Rust convention, see
//! https://github.com/matklad/cargo-xtask). Every command installs the system packages it
//! needs first, idempotently, so the README's commands work on a fresh Debian machine.

mod bench;
mod chart;
mod images;
mod prerequisites;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "mirrornet project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Run every test: formatting, clippy, unit, property, kernel and chart tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the seed scenario in network namespaces and show traffic crossing it.
    Demo,
    /// Build the agent and operator images as OCI archives in target/images (no engine needed).
    Images {
        /// The tag recorded in the archives.
        #[arg(long, default_value = "0.1.0")]
        tag: String,
        /// Build the images the real-node test runs instead (tag `e2e`, with pause).
        #[arg(long)]
        test: bool,
    },
    /// Rewrite crds/mirrornetwork.yaml from the API types.
    Crdgen,
    /// Install the system packages the tests need, and nothing else.
    Prerequisites,
    /// End to end on a kind cluster (needs docker, kind, kubectl, helm; see e2e/README.md).
    E2eKind,
    /// Measure datapath and control-plane costs; writes docs/bench (see BENCHMARKS.md).
    Bench(bench::Options),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Test { args } => test(&args),
        Task::Demo => demo(),
        Task::Images { tag, test } => {
            prerequisites::ensure(prerequisites::IMAGES)?;
            prerequisites::require_root("debootstrap and the image layers need root")?;
            if test {
                test_images().map(drop)
            } else {
                images::build(&root, &tag).map(drop)
            }
        }
        Task::Crdgen => crdgen(&root),
        Task::Prerequisites => prerequisites::ensure(prerequisites::TEST),
        // The kind e2e lives with the other scenario code in the e2e crate (e2e/src/kind.rs).
        Task::E2eKind => run(
            "cargo",
            &[
                "run",
                "--quiet",
                "--package",
                "mirrornet-e2e",
                "--bin",
                "e2e-kind",
            ],
        ),
        Task::Bench(options) => {
            prerequisites::ensure(prerequisites::BENCH)?;
            prerequisites::require_root("the bench builds network namespaces")?;
            bench::run(&root, options)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it first, and fails with its exit status.
fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_env(program, args, &[])
}

/// Runs a command with extra environment variables, echoing it first.
fn run_with_env(program: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    eprintln!("\x1b[1m$ {program} {}\x1b[0m", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds (first run on a machine) or finds (every later run) etcd, the Kubernetes
/// components, kubectl and helm with `e2e/k8s/build.sh`, and returns their directory. It needs
/// Go: the project's machines have it; `go` is looked up on PATH and in /usr/local/go/bin.
fn control_plane() -> Result<PathBuf> {
    // Go's own install directory comes last: a `go` on PATH wins.
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.push(PathBuf::from("/usr/local/go/bin"));
    let path = std::env::join_paths(dirs)?;
    let go = Command::new("go")
        .arg("version")
        .env("PATH", &path)
        .output();
    if !go.is_ok_and(|o| o.status.success()) {
        bail!(
            "the cluster tests build Kubernetes from its Go modules and need Go 1.26 or newer \
             (`go` on PATH or in /usr/local/go/bin); none was found"
        );
    }
    let started = std::time::Instant::now();
    eprintln!("\x1b[1m$ bash e2e/k8s/build.sh\x1b[0m");
    let out = Command::new("bash")
        .arg("e2e/k8s/build.sh")
        .env("PATH", &path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run e2e/k8s/build.sh")?;
    if !out.status.success() {
        bail!("e2e/k8s/build.sh failed ({})", out.status);
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    eprintln!(
        "control plane binaries in {dir} ({:.0?})",
        started.elapsed()
    );
    Ok(PathBuf::from(dir))
}

/// The tag the test images carry.
const TEST_TAG: &str = "e2e";

/// Builds the agent, operator and pause images for the real-node test and returns their
/// directory.
fn test_images() -> Result<PathBuf> {
    let root = workspace_root();
    let versions = std::fs::read_to_string(root.join("e2e/k8s/versions.env"))?;
    let kubernetes = versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES="))
        .context("e2e/k8s/versions.env names no KUBERNETES")?
        .trim();
    let started = std::time::Instant::now();
    let mut built = images::build(&root, TEST_TAG)?;
    built.push(images::build_pause(&root, kubernetes, TEST_TAG)?);
    for image in &built {
        eprintln!("image {}: {} bytes", image.name, image.bytes);
    }
    eprintln!("test images built in {:.0?}", started.elapsed());
    let dir = built[0].archive.parent().context("archive directory")?;
    Ok(dir.to_path_buf())
}

/// Features the test suites need in the agent binary.
const AGENT_TEST_FEATURES: &str = "mirrornet-agent/failpoints";

fn test(extra: &[String]) -> Result<()> {
    prerequisites::ensure(prerequisites::TEST)?;
    prerequisites::require_root("the kernel tests build network namespaces")?;
    let started = std::time::Instant::now();
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The scenario tests drive the real agent binary inside namespaces, built with its
    // test-only failpoints; the test run uses the same features so it does not rebuild it
    // without them.
    run(
        "cargo",
        &[
            "build",
            "--package",
            "mirrornet-agent",
            "--package",
            "mirrornet-operator",
            "--features",
            AGENT_TEST_FEATURES,
        ],
    )?;
    // The cluster tests run a real control plane built from Kubernetes' Go modules.
    let k8s = control_plane()?;
    // The real-node test runs the images, built as `cargo xtask images` builds them, in
    // containerd; its sandbox image is Kubernetes' pause, built here too.
    let images = test_images()?;
    let mut args = vec![
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        AGENT_TEST_FEATURES,
    ];
    args.extend(extra.iter().map(String::as_str));
    eprintln!("MIRRORNET_K8S_BIN={}", k8s.display());
    eprintln!("MIRRORNET_IMAGES={}", images.display());
    run_with_env(
        "cargo",
        &args,
        &[
            ("MIRRORNET_K8S_BIN", k8s.as_os_str()),
            ("MIRRORNET_IMAGES", images.as_os_str()),
        ],
    )?;
    chart::test(&workspace_root())?;
    eprintln!(
        "\x1b[1;32mall tests passed\x1b[0m in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn demo() -> Result<()> {
    prerequisites::ensure(prerequisites::DEMO)?;
    prerequisites::require_root("the demo builds network namespaces")?;
    run(
        "cargo",
        &[
            "run",
            "--quiet",
            "--package",
            "mirrornet-agent",
            "--",
            "demo",
        ],
    )
}

fn crdgen(root: &Path) -> Result<()> {
    let output = Command::new("cargo")
        .args(["run", "--quiet", "-p", "mirrornet-api", "--bin", "crdgen"])
        .output()?;
    if !output.status.success() {
        bail!("crdgen failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(root.join("crds/mirrornetwork.yaml"), &output.stdout)?;
    eprintln!("wrote crds/mirrornetwork.yaml");
    chart::copy_crd(root)
}
