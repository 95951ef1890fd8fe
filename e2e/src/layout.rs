//! The layout a build leaves on a node, captured once and replayed: what lets a test show that
//! a node programmed by an earlier build re-applies with zero writes under this one, without
//! building the earlier release in every CI run.
//!
//! ```text
//! capture  (by hand, with the earlier build's agent: `cargo run -p mirrornet-e2e --bin
//!          capture-layout -- AGENT EXAMPLE > e2e/layouts/NAME.json`)
//!          agent apply in a lab ─> our nft table as `nft -j list` prints it, our addresses,
//!          routes and rules as this build observes them, the sysctls the memory names, the
//!          memory file itself
//! replay   (e2e/tests/upgrade.rs) the same objects into a fresh lab of the same topology:
//!          the listing fed back to nft, rtnetlink for the rest, the memory file as it was
//! ```
//!
//! Addresses, routes and rules are replayed through this build's netlink writer, because
//! iproute2 6.1 cannot give an address a protocol. That still proves the point: they are
//! captured as this build observes them, so the replayed node is the earlier node as this
//! build sees it, and zero writes means this build's plan of it is what is there. The nft
//! table, where layouts change most, is replayed from nft's own listing (nft's text form does
//! not parse back: our maps are named `dnat` and `snat`, which are keywords there), put back as
//! a rollback puts it back.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use mirrornet_agent::lab::Lab;
use mirrornet_agent::netlink::Netlink;
use mirrornet_agent::plan::{Address, Route, Rule};
use serde::{Deserialize, Serialize};

/// Everything of mirrornet's one network namespace holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// The build that made it (`git describe`), for the reader.
    pub made_by: String,
    /// The example it programs (a file under examples/).
    pub example: String,
    /// `nft -j list table inet mirrornet`, as printed.
    pub nft: serde_json::Value,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    /// Path under /proc/sys -> value, for every sysctl the memory says a network needs.
    pub sysctls: BTreeMap<String, String>,
    /// The agent's memory file, as written.
    pub memory: serde_json::Value,
}

/// The layout file of `name` under e2e/layouts.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("layouts")
        .join(format!("{name}.json"))
}

/// The memory file of the agents that run in namespace `short` of `lab`.
fn memory_file(lab: &Lab, short: &str) -> PathBuf {
    let inode = std::fs::metadata(format!("/run/netns/{}", lab.ns(short)))
        .expect("the namespace's inode")
        .ino();
    lab.state_dir().join(format!("netns-{inode}.json"))
}

/// Runs `work` on a thread inside namespace `short` of `lab`, with a netlink connection there.
fn inside<T: Send + 'static>(
    lab: &Lab,
    short: &str,
    work: impl AsyncFnOnce(&Netlink) -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{}", lab.ns(short));
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).expect("opening the namespace");
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the namespace");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let netlink = Netlink::connect().expect("a netlink socket");
            work(&netlink).await
        })
    })
    .join()
    .expect("the thread inside the namespace")
}

/// What namespace `short` of `lab` holds of mirrornet's, as the layout of `example`.
pub fn capture(lab: &Lab, short: &str, example: &str, made_by: &str) -> Layout {
    let (addresses, routes, rules) = inside(lab, short, async |netlink: &Netlink| {
        let links = netlink.links().await.expect("links");
        let addresses = netlink
            .addresses(&links)
            .await
            .expect("addresses")
            .into_iter()
            .filter(|a| a.ours)
            .map(|a| Address {
                interface: a.interface,
                address: a.address,
                prefix_len: a.prefix_len,
            })
            .collect::<Vec<_>>();
        let (routes, _, _) = netlink.routes(&links).await.expect("routes");
        let (rules, _, _) = netlink.rules().await.expect("rules");
        (addresses, routes, rules)
    });
    let nft = lab
        .stdout(short, &["nft", "-j", "list", "table", "inet", "mirrornet"])
        .expect("listing our table");
    let nft = serde_json::from_str(&nft).expect("nft -j prints JSON");
    let text = std::fs::read_to_string(memory_file(lab, short)).expect("the memory file");
    let memory: serde_json::Value = serde_json::from_str(&text).expect("the memory is JSON");
    let sysctls = memory["networks"]
        .as_object()
        .into_iter()
        .flat_map(|networks| networks.values())
        .flat_map(|record| record["sysctls"].as_array().cloned().unwrap_or_default())
        .filter_map(|path| {
            let path = path.as_str()?.to_owned();
            let value = lab
                .stdout(short, &["cat", &format!("/proc/sys/{path}")])
                .ok()?;
            Some((path, value.trim().to_owned()))
        })
        .collect();
    Layout {
        made_by: made_by.into(),
        example: example.into(),
        nft,
        addresses,
        routes,
        rules,
        sysctls,
        memory,
    }
}

/// Puts `layout` into namespace `short` of `lab`, as the build that made it left it.
pub fn replay(lab: &Lab, short: &str, layout: &Layout) {
    let table = layout.nft.clone();
    inside(lab, short, async move |_: &Netlink| {
        mirrornet_agent::nft::command::restore(Some(&table)).expect("putting the table back")
    });
    for (path, value) in &layout.sysctls {
        lab.exec(
            short,
            &["sh", "-c", &format!("echo {value} > /proc/sys/{path}")],
        )
        .expect("writing a sysctl");
    }
    let (addresses, routes, rules) = (
        layout.addresses.clone(),
        layout.routes.clone(),
        layout.rules.clone(),
    );
    inside(lab, short, async move |netlink: &Netlink| {
        let index = async |name: &str| {
            netlink
                .link_index(name)
                .await
                .expect("a link index")
                .unwrap_or_else(|| panic!("no link {name} to replay onto"))
        };
        for a in &addresses {
            netlink
                .add_address(index(&a.interface).await, a)
                .await
                .expect("adding an address");
        }
        for r in &routes {
            netlink
                .add_route(index(&r.interface).await, r)
                .await
                .expect("adding a route");
        }
        for r in &rules {
            netlink.add_rule(r).await.expect("adding a rule");
        }
    });
    std::fs::create_dir_all(lab.state_dir()).expect("the lab's state directory");
    let memory = serde_json::to_vec_pretty(&layout.memory).expect("the memory as JSON");
    std::fs::write(memory_file(lab, short), memory).expect("writing the memory file");
}
