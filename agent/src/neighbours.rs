//! The conflict probe of on-link aliases: before the node answers address resolution for an
//! alias address on a side, it asks that side whether a host already uses the address, and
//! leaves a taken one alone (the plan reports it, see [`crate::plan::TakenAlias`]).
//!
//! The probe is the kernel's own neighbour resolution (`NTF_USE`, as a packet to the address
//! would start it): an ARP request or a neighbour solicitation from the node's address on the
//! side, and whoever answers is in the neighbour table a moment later. It needs nothing beyond
//! NET_ADMIN, no raw socket. A one-shot command probes every time; the `run` loop keeps the
//! findings, so a repair or a scoped pass does not wait for silent hosts again, and probes
//! again in every full pass (each resync): that is how a host that takes an alias address
//! later is found, reported, and the address given up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mirrornet_api::ValidNetwork;

use crate::error::Result;
use crate::netlink::{Netlink, Resolution};
use crate::plan::{self, Proxy};

/// How long the probe waits for answers. Hosts on a link answer within milliseconds; the
/// kernel repeats an unanswered request only after a second.
pub const PROBE_WINDOW: Duration = Duration::from_millis(1000);

/// Most probes in flight at once: the kernel's neighbour table keeps 1024 entries by default
/// (`gc_thresh3`), and the node's own neighbours need room too.
const BATCH: usize = 256;

/// What the probe found, by address and side interface, and when.
#[derive(Debug, Default)]
pub struct ConflictProbe {
    found: Mutex<BTreeMap<Proxy, (bool, Instant)>>,
}

impl ConflictProbe {
    /// Probes every on-link alias address of `networks` whose finding is older than
    /// `max_age` (or missing), on the side interfaces that exist and hold the network's
    /// gateway address (`ready`): the request must come from the node's address on that
    /// side, or a host that filters by reverse path would ignore it. A link that cannot be
    /// probed keeps its last findings.
    pub async fn refresh(
        &self,
        netlink: &Netlink,
        networks: &[&ValidNetwork],
        max_age: Duration,
        ready: impl Fn(&str, IpAddr) -> bool,
    ) -> Result<()> {
        let now = Instant::now();
        let due: Vec<Proxy> = {
            let found = self
                .found
                .lock()
                .expect("the probe's lock is never poisoned");
            networks
                .iter()
                .flat_map(|n| {
                    plan::on_link_claims(n)
                        .into_iter()
                        .map(|c| c.proxy)
                        .filter(|p| ready(&p.interface, n.gateway))
                })
                .filter(|p| {
                    found
                        .get(p)
                        .is_none_or(|(_, at)| now.duration_since(*at) >= max_age)
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let mut indexes: BTreeMap<String, Option<u32>> = BTreeMap::new();
        for p in &due {
            if !indexes.contains_key(&p.interface) {
                indexes.insert(p.interface.clone(), netlink.link_index(&p.interface).await?);
            }
        }
        let due: Vec<(u32, Proxy)> = due
            .into_iter()
            .filter_map(|p| Some((indexes.get(&p.interface).copied().flatten()?, p)))
            .collect();
        for batch in due.chunks(BATCH) {
            // A finding is as old as its question, not its answer.
            let at = Instant::now();
            let taken = probe(netlink, batch).await?;
            let mut found = self
                .found
                .lock()
                .expect("the probe's lock is never poisoned");
            for (_, p) in batch {
                found.insert(p.clone(), (taken.contains(p), at));
            }
        }
        tracing::debug!(
            probed = indexes.len(),
            ms = now.elapsed().as_secs_f64() * 1e3,
            "probed the on-link aliases"
        );
        Ok(())
    }

    /// What was found of each alias address, by side interface (`true`: a host uses it):
    /// what [`plan::NodeFacts::aliases`] starts from.
    pub fn findings(&self) -> BTreeMap<String, BTreeMap<IpAddr, bool>> {
        let found = self
            .found
            .lock()
            .expect("the probe's lock is never poisoned");
        let mut findings: BTreeMap<String, BTreeMap<IpAddr, bool>> = BTreeMap::new();
        for (p, (used, _)) in found.iter() {
            findings
                .entry(p.interface.clone())
                .or_default()
                .insert(p.address, *used);
        }
        findings
    }
}

/// Asks each link whether a host answers for each address: the ones that did.
///
/// An entry fixed by an administrator counts as taken and is left as it is. Any other entry
/// the table holds for the address is forgotten first, so that only an answer to this probe
/// counts (a host long gone can leave a stale entry behind). Entries that nobody answered are
/// forgotten afterwards, leaving the table as it was.
async fn probe(netlink: &Netlink, targets: &[(u32, Proxy)]) -> Result<BTreeSet<Proxy>> {
    let links: BTreeSet<u32> = targets.iter().map(|(i, _)| *i).collect();
    let mut before: BTreeMap<u32, BTreeMap<IpAddr, Resolution>> = BTreeMap::new();
    for index in &links {
        before.insert(*index, netlink.neighbours(*index).await?);
    }
    let mut taken = BTreeSet::new();
    let mut asked = Vec::new();
    for (index, p) in targets {
        match before[index].get(&p.address) {
            Some(Resolution::Fixed) => {
                taken.insert(p.clone());
                continue;
            }
            Some(_) => netlink.forget_neighbour(*index, p.address).await?,
            None => {}
        }
        netlink.resolve(*index, p.address).await?;
        asked.push((*index, p));
    }
    tokio::time::sleep(PROBE_WINDOW).await;
    let mut after: BTreeMap<u32, BTreeMap<IpAddr, Resolution>> = BTreeMap::new();
    for index in &links {
        after.insert(*index, netlink.neighbours(*index).await?);
    }
    for (index, p) in asked {
        match after[&index].get(&p.address) {
            Some(Resolution::Answered | Resolution::Fixed) => {
                taken.insert(p.clone());
            }
            Some(Resolution::Unanswered) => netlink.forget_neighbour(index, p.address).await?,
            None => {}
        }
    }
    Ok(taken)
}
