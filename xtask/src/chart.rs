//! The Helm chart's tests and the chart's copy of the CRD.
//!
//! The tests (charts/tests/test_chart.py) drive Helm v4's Go SDK through helm-python-sdk and
//! validate every rendered object with kubernetes-validate, from a project-local virtualenv
//! `.venv` that this module creates and fills idempotently: a second run reuses it without
//! touching the network, and a change of charts/tests/requirements.txt reinstalls.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::run;

const REQUIREMENTS: &str = "charts/tests/requirements.txt";
/// Written into the venv once the requirements are installed: its content is the
/// requirements file it was made from.
const STAMP: &str = ".venv/mirrornet-requirements.txt";
const GENERATED_CRD: &str = "crds/mirrornetwork.yaml";
const CHART_CRD: &str = "charts/mirrornet/crds/mirrornetwork.yaml";

/// Runs the chart and image tests. The image tests run `--help` of both binaries: the
/// operator is built here, the agent by the caller (`cargo xtask test` builds it with its
/// test features, which building it here again without them would undo).
pub fn test(root: &Path) -> Result<()> {
    ensure_venv(root)?;
    run("cargo", &["build", "--package", "mirrornet-operator"])?;
    run(
        ".venv/bin/python",
        &[
            "-m",
            "unittest",
            "discover",
            "--start-directory",
            "charts/tests",
            "--verbose",
        ],
    )
}

/// Copies the generated CRD into the chart (a symlink would not survive `helm package`).
pub fn copy_crd(root: &Path) -> Result<()> {
    std::fs::copy(root.join(GENERATED_CRD), root.join(CHART_CRD))
        .with_context(|| format!("copying {GENERATED_CRD} to {CHART_CRD}"))?;
    eprintln!("wrote {CHART_CRD}");
    Ok(())
}

/// `python3 -m venv .venv` when there is none, `pip install -r` when the requirements changed.
fn ensure_venv(root: &Path) -> Result<()> {
    if !root.join(".venv/bin/python").is_file() {
        run("python3", &["-m", "venv", ".venv"])?;
    }
    let wanted = std::fs::read_to_string(root.join(REQUIREMENTS))
        .with_context(|| format!("reading {REQUIREMENTS}"))?;
    let installed = std::fs::read_to_string(root.join(STAMP)).unwrap_or_default();
    if installed == wanted {
        return Ok(());
    }
    run(
        ".venv/bin/python",
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--requirement",
            REQUIREMENTS,
        ],
    )?;
    std::fs::write(root.join(STAMP), wanted)?;
    if !root.join(".venv/bin/python").is_file() {
        bail!(".venv has no python after installing");
    }
    Ok(())
}
