//! `cargo xtask e2e-kind` runs this: the kind e2e ([`mirrornet_e2e::kind`]), from the
//! workspace root; exits non-zero when it fails (the cluster is then kept for inspection).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives in the workspace");
    match mirrornet_e2e::kind::run(root) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
