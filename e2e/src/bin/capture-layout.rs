//! Captures the layout an agent leaves for an example network (see [`mirrornet_e2e::layout`]):
//!
//! ```text
//! MIRRORNET_AGENT_BIN=<that build's agent> \
//!   cargo run -p mirrornet-e2e --bin capture-layout -- EXAMPLE MADE_BY > e2e/layouts/NAME.json
//! ```
//!
//! EXAMPLE is a file name under examples/ without `.yaml`; MADE_BY names the build (a commit).
//! As root: it builds the example's topology in namespaces and removes it again.

use std::process::ExitCode;

use mirrornet_agent::lab::MIDDLEMAN;
use mirrornet_e2e::layout;
use mirrornet_e2e::node::{apply, delete, scenario_of};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [example, made_by] = args.as_slice() else {
        eprintln!("usage: capture-layout EXAMPLE MADE_BY  (EXAMPLE: seed, ipv6, three-sides)");
        return ExitCode::FAILURE;
    };
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{example}.yaml"));
    let yaml = match std::fs::read_to_string(&file) {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("reading {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let (scenario, spec) = scenario_of(&format!("layout-{example}"), &yaml, false);
    apply(&scenario.lab, &spec, &["--backend", "policy-routing"]);
    let captured = layout::capture(&scenario.lab, MIDDLEMAN, example, made_by);
    delete(&scenario.lab, &spec);
    println!(
        "{}",
        serde_json::to_string_pretty(&captured).expect("the layout as JSON")
    );
    ExitCode::SUCCESS
}
