//! A node programmed by an earlier build, under this one: it re-applies with zero writes, its
//! traffic crosses as before, `show` calls it in sync, and a delete leaves nothing. The earlier
//! build's layout is replayed from e2e/layouts (see [`mirrornet_e2e::layout`]), so the check
//! runs in every CI run without building that release.
//!
//! When a change of layout is meant (the diff then rewrites nodes on upgrade, on purpose),
//! the test says which objects; capture the new layout beside the old one and keep both.

use mirrornet_agent::lab::{MIDDLEMAN, snapshot};
use mirrornet_e2e::layout::{self, Layout};
use mirrornet_e2e::node::{
    SpecFile, agent, apply, assert_same, crosses_both_ways_to_every_host, delete, require_root,
    scenario_of,
};

/// The layouts kept, by file name under e2e/layouts.
const LAYOUTS: &[&str] = &["seed-9432169", "ipv6-9432169", "three-sides-9432169"];

fn load(name: &str) -> Layout {
    let path = layout::path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn a_node_programmed_by_an_earlier_build_reapplies_with_zero_writes() {
    require_root();
    for name in LAYOUTS {
        let earlier = load(name);
        let (mut s, spec): (_, SpecFile) = scenario_of(
            &format!("upgrade-{}", earlier.example),
            &example(&earlier.example),
            false,
        );
        let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
        layout::replay(&s.lab, MIDDLEMAN, &earlier);
        let report = apply(&s.lab, &spec, &["--backend", "policy-routing"]);
        assert_eq!(
            report["writes"], 0,
            "{name}: this build rewrites a node {} programmed: {}",
            earlier.made_by, report["steps"]
        );
        let show = agent(&s.lab, &["show", "-o", "json"], &[]);
        let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        assert_eq!(show[0]["in_sync"], true, "{name}: {show}");
        if earlier.example == "seed" {
            crosses_both_ways_to_every_host(&mut s, 7300);
        }
        delete(&s.lab, &spec);
        assert_same(
            &before,
            &snapshot(&s.lab, MIDDLEMAN).unwrap(),
            &format!("{name}: a delete after the upgrade leaves nothing"),
        );
    }
}
