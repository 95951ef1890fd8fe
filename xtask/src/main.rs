//! Project automation: `cargo xtask <command>` (the usual Rust convention, see
//! https://github.com/matklad/cargo-xtask). Every command installs the system packages it
//! needs first, idempotently, so the README's commands work on a fresh Debian machine.

mod bench;
mod chart;
mod kind;
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
        Task::Crdgen => crdgen(&root),
        Task::Prerequisites => prerequisites::ensure(prerequisites::TEST),
        Task::E2eKind => kind::run(&root),
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
    eprintln!("\x1b[1m$ {program} {}\x1b[0m", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
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
            "--features",
            AGENT_TEST_FEATURES,
        ],
    )?;
    let mut args = vec![
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        AGENT_TEST_FEATURES,
    ];
    args.extend(extra.iter().map(String::as_str));
    run("cargo", &args)?;
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
