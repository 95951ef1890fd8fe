//! The agent's handle on this node's kernel: the netlink connection every read and write goes
//! through, the id ranges networks from a file draw from, the nft cache of a long-lived
//! process, and the test-only failpoints. What it does with them lives in the modules named
//! after the steps: [`crate::observe`], [`crate::diff`], [`crate::apply`]; [`crate::session`]
//! runs them in order.

use mirrornet_api::allocation::IdRanges;

use crate::apply::{self, Failpoints};
use crate::error::Result;
use crate::memory::{Memory, MemoryCache};
use crate::neighbours::ConflictProbe;
use crate::netlink::Netlink;
use crate::observe::{self, KernelView, NftCache};
use crate::step::Changes;

#[derive(Debug)]
pub struct Engine {
    netlink: Netlink,
    ranges: IdRanges,
    failpoints: Failpoints,
    /// Present when the engine lives long enough (`run`) for a cache to pay.
    nft_cache: Option<NftCache>,
    memory_cache: Option<MemoryCache>,
    /// What the conflict probe found of on-link alias addresses, kept for the process.
    conflicts: ConflictProbe,
}

impl Engine {
    pub fn new(netlink: Netlink, ranges: IdRanges) -> Self {
        Self {
            netlink,
            ranges,
            failpoints: Failpoints::from_env(),
            nft_cache: None,
            memory_cache: None,
            conflicts: ConflictProbe::default(),
        }
    }

    /// Connects to netlink in the current network namespace.
    pub fn connect(ranges: IdRanges) -> std::io::Result<Self> {
        Ok(Self::new(Netlink::connect()?, ranges))
    }

    /// The same engine, re-reading our nft table only when the ruleset has changed since the
    /// last listing ([`NftCache`]), and the memory file only when it was replaced
    /// ([`MemoryCache`]). Only for one long-lived process in one namespace.
    pub fn with_caches(mut self) -> Self {
        self.nft_cache = Some(NftCache::default());
        self.memory_cache = Some(MemoryCache::default());
        self
    }

    /// The memory of this namespace, as it stands for `view`.
    pub fn memory(&self, view: &KernelView) -> Result<Memory> {
        Ok(Memory::load(view, self.memory_cache.as_ref())?)
    }

    /// The engine's netlink connection, for the checks made after a change.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The conflict probe's findings of on-link alias addresses.
    pub fn conflicts(&self) -> &ConflictProbe {
        &self.conflicts
    }

    /// The id ranges networks without recorded ids are allocated from.
    pub fn ranges(&self) -> &IdRanges {
        &self.ranges
    }

    /// Reads everything mirrornet cares about from the kernel.
    pub async fn observe(&self) -> Result<KernelView> {
        observe::observe(&self.netlink, self.nft_cache.as_ref()).await
    }

    /// Reads our nft table (from the cache while the ruleset's generation holds).
    pub fn observe_nft(&self) -> Result<std::sync::Arc<crate::nft::ObservedNft>> {
        observe::observe_nft(self.nft_cache.as_ref())
    }

    /// Runs `changes`, undoing them all on the first failure; returns the writes made.
    pub async fn execute(&self, changes: &Changes) -> Result<usize> {
        apply::execute(&self.netlink, self.failpoints, changes).await
    }
}
