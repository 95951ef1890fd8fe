//! Kernel id allocation: the routing table, mark, conntrack zone and rule priority of every
//! side, drawn from configured ranges. Tables, marks and zones are unique among all networks;
//! rule priorities are shared (see [`Allocator`]).
//!
//! Pure and shared: the operator allocates cluster-wide and records the result in status;
//! the agent's file mode allocates for the networks of one box. Both take the ranges from the
//! same flags ([`RangeFlags`]).
//! An [`Allocator`] is rebuilt from the allocations already held (status after an operator
//! restart, the kernel after an agent restart), so ids are stable for a network's life.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use crate::v1alpha1::{Allocation, SideAllocation};
use crate::validation::ValidNetwork;

/// Where ids come from. The defaults stay clear of the kernel's own tables, of kube-proxy's
/// marks (0x4000, 0x8000), Cilium's (0x0f00) and Calico's lowest bits, and of the l3mdev
/// rule at priority 1000, which the mark rules must precede.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRanges {
    pub tables: RangeInclusive<u32>,
    pub zones: RangeInclusive<u16>,
    pub rule_priorities: RangeInclusive<u32>,
    /// The packet-mark bits mirrornet may use; marks are the non-zero values under it.
    pub mark_mask: u32,
}

impl Default for IdRanges {
    fn default() -> Self {
        Self {
            tables: 20000..=29999,
            zones: 40000..=49999,
            rule_priorities: 500..=999,
            mark_mask: 0xff00_0000,
        }
    }
}

impl IdRanges {
    /// Every mark value a contiguous mask allows, lowest first.
    fn marks(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        let shift = self.mark_mask.trailing_zeros().min(31);
        let top = self.mark_mask >> shift;
        (1..=top).map(move |v| v << shift)
    }

    /// Checks the ranges themselves; an error names the flag ([`RangeFlags`]) that sets the
    /// range at fault.
    pub fn check(&self) -> Result<(), RangeError> {
        let err = |flag, reason: String| Err(RangeError { flag, reason });
        if self.mark_mask == 0 {
            return err(MARK_MASK, "must have at least one bit set".into());
        }
        let shifted = self.mark_mask >> self.mark_mask.trailing_zeros();
        if shifted & (shifted + 1) != 0 {
            return err(
                MARK_MASK,
                format!(
                    "{:#010x} must be one contiguous run of bits",
                    self.mark_mask
                ),
            );
        }
        if self.tables.is_empty() || *self.tables.start() == 0 {
            return err(TABLE_RANGE, "must be non-empty and start above 0".into());
        }
        if [253, 254, 255].iter().any(|t| self.tables.contains(t)) {
            return err(
                TABLE_RANGE,
                "must not include the kernel's tables 253-255".into(),
            );
        }
        if self.zones.is_empty() || *self.zones.start() == 0 {
            return err(ZONE_RANGE, "must be non-empty and start above 0".into());
        }
        if self.rule_priorities.is_empty()
            || *self.rule_priorities.start() == 0
            || *self.rule_priorities.end() >= 1000
        {
            return err(
                RULE_PRIORITY_RANGE,
                "must lie within 1-999, ahead of the l3mdev rule at 1000".into(),
            );
        }
        Ok(())
    }
}

const TABLE_RANGE: &str = "--table-range";
const ZONE_RANGE: &str = "--zone-range";
const RULE_PRIORITY_RANGE: &str = "--rule-priority-range";
const MARK_MASK: &str = "--mark-mask";

/// A range setting that cannot be used, and the flag that set it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct RangeError {
    pub flag: &'static str,
    pub reason: String,
}

/// The id ranges as text, the way the operator and the agent both take them: flags, each also
/// read from the environment (`MIRRORNET_MARK_MASK` for `--mark-mask`, ...), ranges as
/// `FIRST-LAST` and the mask as a number, decimal or `0x` hex. Declared once, so that the two
/// programs take the same syntax and name the same flags; with the `cli` feature it is a
/// `clap::Args` to flatten into a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RangeFlags {
    /// Routing tables handed to networks, `FIRST-LAST`; one per side.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            global = true,
            env = "MIRRORNET_TABLE_RANGE",
            default_value = "20000-29999"
        )
    )]
    pub table_range: String,
    /// Conntrack zones handed to networks, `FIRST-LAST`; one per side.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            global = true,
            env = "MIRRORNET_ZONE_RANGE",
            default_value = "40000-49999"
        )
    )]
    pub zone_range: String,
    /// Priorities of the ip rules, `FIRST-LAST`, below the l3mdev rule at 1000; sides share
    /// them, so the range bounds no number of networks.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            global = true,
            env = "MIRRORNET_RULE_PRIORITY_RANGE",
            default_value = "500-999"
        )
    )]
    pub rule_priority_range: String,
    /// Bits of the packet mark mirrornet may use (one contiguous run); every side holds one
    /// value under it: `0xff000000` fits 127 two-sided networks, `0xfff00000` 2047.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            global = true,
            env = "MIRRORNET_MARK_MASK",
            default_value = "0xff000000"
        )
    )]
    pub mark_mask: String,
}

impl Default for RangeFlags {
    fn default() -> Self {
        Self::from(&IdRanges::default())
    }
}

impl From<&IdRanges> for RangeFlags {
    /// The settings that give `ranges` back.
    fn from(ranges: &IdRanges) -> Self {
        let range = |r: &RangeInclusive<u32>| format!("{}-{}", r.start(), r.end());
        Self {
            table_range: range(&ranges.tables),
            zone_range: range(&(u32::from(*ranges.zones.start())..=u32::from(*ranges.zones.end()))),
            rule_priority_range: range(&ranges.rule_priorities),
            mark_mask: format!("{:#010x}", ranges.mark_mask),
        }
    }
}

impl RangeFlags {
    /// Parses and checks the ranges; an error names the flag.
    pub fn ranges(&self) -> Result<IdRanges, RangeError> {
        let zones = parse_range(ZONE_RANGE, &self.zone_range)?;
        let narrow = |v: u32| {
            u16::try_from(v).map_err(|_| RangeError {
                flag: ZONE_RANGE,
                reason: format!("{v} is above the largest zone 65535"),
            })
        };
        let ranges = IdRanges {
            tables: parse_range(TABLE_RANGE, &self.table_range)?,
            zones: narrow(*zones.start())?..=narrow(*zones.end())?,
            rule_priorities: parse_range(RULE_PRIORITY_RANGE, &self.rule_priority_range)?,
            mark_mask: parse_number(MARK_MASK, &self.mark_mask)?,
        };
        ranges.check()?;
        Ok(ranges)
    }

    /// The command-line arguments that set these ranges, for a process started with the same
    /// ones (the agent's rollback guard).
    pub fn args(&self) -> Vec<String> {
        [
            (TABLE_RANGE, &self.table_range),
            (ZONE_RANGE, &self.zone_range),
            (RULE_PRIORITY_RANGE, &self.rule_priority_range),
            (MARK_MASK, &self.mark_mask),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value.clone()])
        .collect()
    }
}

/// A number in decimal or `0x` hex.
fn parse_number(flag: &'static str, text: &str) -> Result<u32, RangeError> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| RangeError {
        flag,
        reason: format!("{text:?} is not a number"),
    })
}

/// `FIRST-LAST`, both included.
fn parse_range(flag: &'static str, text: &str) -> Result<RangeInclusive<u32>, RangeError> {
    let (a, b) = text.split_once('-').ok_or_else(|| RangeError {
        flag,
        reason: format!("{text:?} is not FIRST-LAST"),
    })?;
    let (a, b) = (parse_number(flag, a)?, parse_number(flag, b)?);
    if a > b {
        return Err(RangeError {
            flag,
            reason: format!("{a} is above {b}"),
        });
    }
    Ok(a..=b)
}

/// Held against available ids of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KindUsage {
    /// Ids held by networks (and, for tables, by other software). For rule priorities, which
    /// sides share, the priorities at least one side uses: at `capacity` further sides share
    /// them, which is not exhaustion.
    pub held: u64,
    /// Ids the configured range offers.
    pub capacity: u64,
}

/// Held against available ids, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub tables: KindUsage,
    pub marks: KindUsage,
    pub zones: KindUsage,
    pub rule_priorities: KindUsage,
}

impl Usage {
    /// Each kind with its metric label.
    pub fn by_kind(&self) -> [(&'static str, KindUsage); 4] {
        [
            ("table", self.tables),
            ("mark", self.marks),
            ("zone", self.zones),
            ("rulePriority", self.rule_priorities),
        ]
    }
}

/// Why ids could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("spec.sides[{index}].kernelIds.{field}: {value} is already held by network {holder:?}")]
    ExplicitIdTaken {
        index: usize,
        field: &'static str,
        value: u64,
        holder: String,
    },
    #[error(
        "spec.sides[{index}].kernelIds.mark: {value:#x} has bits outside the mark mask {mask:#x}"
    )]
    MarkOutsideMask { index: usize, value: u32, mask: u32 },
    #[error("no free {what} left in the configured range {range}")]
    Exhausted { what: &'static str, range: String },
}

/// Ids held by someone, per kind, with the holder's name for error messages.
#[derive(Debug, Clone, Default)]
struct Held {
    tables: BTreeMap<u32, String>,
    marks: BTreeMap<u32, String>,
    zones: BTreeMap<u16, String>,
    /// How many sides use each priority.
    rule_priorities: BTreeMap<u32, usize>,
}

/// Hands out tables, marks and zones that nobody holds, and rule priorities that the fewest
/// sides use, and remembers who holds which.
///
/// Rule priorities need not be unique, and making them so would cap a node at 250 two-sided
/// networks (500-999): the kernel keeps any number of rules at one priority; a side's mark
/// rule matches only its own mark and its iif rule only its own interface, so those never
/// compete for a packet (the reverse-path rules `from <gateway> iif lo` of networks with one
/// gateway address can, at distinct priorities as much as at one, and there any of them
/// answers); and the agent tells rules apart by their routing table, which is unique.
/// Spreading them evenly keeps the rules at one priority few.
#[derive(Debug, Clone)]
pub struct Allocator {
    ranges: IdRanges,
    held: Held,
    by_network: BTreeMap<String, Allocation>,
}

/// Name under which ids held by other software (foreign routing tables, rules) are recorded.
pub const FOREIGN: &str = "<foreign>";

impl Allocator {
    pub fn new(ranges: IdRanges) -> Self {
        Self {
            ranges,
            held: Held::default(),
            by_network: BTreeMap::new(),
        }
    }

    /// Rebuilds from allocations already recorded (status, or the kernel).
    pub fn from_existing<'a>(
        ranges: IdRanges,
        existing: impl IntoIterator<Item = (&'a str, &'a Allocation)>,
    ) -> Self {
        let mut me = Self::new(ranges);
        for (network, allocation) in existing {
            me.record(network, allocation.clone());
        }
        me
    }

    pub fn ranges(&self) -> &IdRanges {
        &self.ranges
    }

    /// Marks ids used by other software (e.g. foreign routing tables) as unavailable.
    pub fn reserve_foreign(&mut self, tables: impl IntoIterator<Item = u32>) {
        for t in tables {
            self.held.tables.entry(t).or_insert_with(|| FOREIGN.into());
        }
    }

    /// Names of the networks holding ids, in order.
    pub fn networks(&self) -> impl Iterator<Item = &str> {
        self.by_network.keys().map(String::as_str)
    }

    /// How many ids of each kind are held against how many the ranges offer, so that an
    /// operator can alert before a range runs out.
    pub fn usage(&self) -> Usage {
        let count = |range: &RangeInclusive<u32>| u64::from(range.end() - range.start()) + 1;
        Usage {
            tables: KindUsage {
                held: self.held.tables.len() as u64,
                capacity: count(&self.ranges.tables),
            },
            marks: KindUsage {
                held: self.held.marks.len() as u64,
                capacity: self.ranges.marks().count() as u64,
            },
            zones: KindUsage {
                held: self.held.zones.len() as u64,
                capacity: u64::from(self.ranges.zones.end() - self.ranges.zones.start()) + 1,
            },
            rule_priorities: KindUsage {
                held: self.held.rule_priorities.len() as u64,
                capacity: count(&self.ranges.rule_priorities),
            },
        }
    }

    /// The allocation recorded for `network`, if any.
    pub fn get(&self, network: &str) -> Option<&Allocation> {
        self.by_network.get(network)
    }

    fn record(&mut self, network: &str, allocation: Allocation) {
        for s in &allocation.sides {
            self.held.tables.insert(s.table, network.into());
            self.held.marks.insert(s.mark, network.into());
            self.held.zones.insert(s.zone, network.into());
            *self
                .held
                .rule_priorities
                .entry(s.rule_priority)
                .or_default() += 1;
        }
        self.by_network.insert(network.into(), allocation);
    }

    /// Frees everything `network` holds.
    pub fn release(&mut self, network: &str) -> Option<Allocation> {
        let allocation = self.by_network.remove(network)?;
        for s in &allocation.sides {
            self.held.tables.remove(&s.table);
            self.held.marks.remove(&s.mark);
            self.held.zones.remove(&s.zone);
            if let Some(count) = self.held.rule_priorities.get_mut(&s.rule_priority) {
                *count -= 1;
                if *count == 0 {
                    self.held.rule_priorities.remove(&s.rule_priority);
                }
            }
        }
        Some(allocation)
    }

    /// Returns the network's allocation: the recorded one when it still covers the network's
    /// sides (ids are stable for a network's life), otherwise a new one. Explicit ids in the
    /// spec win; an explicit table, mark or zone is refused when another network holds it, an
    /// explicit rule priority never is. Nothing is recorded on error.
    pub fn allocate(
        &mut self,
        network: &str,
        valid: &ValidNetwork,
    ) -> Result<Allocation, AllocationError> {
        let previous = self.release(network);
        match self.allocate_fresh(network, valid, previous.as_ref()) {
            Ok(allocation) => {
                self.record(network, allocation.clone());
                Ok(allocation)
            }
            Err(e) => {
                if let Some(previous) = previous {
                    self.record(network, previous);
                }
                Err(e)
            }
        }
    }

    fn allocate_fresh(
        &self,
        network: &str,
        valid: &ValidNetwork,
        previous: Option<&Allocation>,
    ) -> Result<Allocation, AllocationError> {
        let mut taken_tables = BTreeSet::new();
        let mut taken_marks = BTreeSet::new();
        let mut taken_zones = BTreeSet::new();
        // This network's own sides count towards how used a priority is, so that its sides
        // spread too.
        let mut taken_prios: BTreeMap<u32, usize> = BTreeMap::new();
        let mut sides = Vec::new();
        let _ = network;
        // Explicit ids first, so an allocated id never lands on one a later side asks for.
        for (index, side) in valid.sides.iter().enumerate() {
            let ids = &side.kernel_ids;
            explicit(
                index,
                "table",
                ids.table,
                &self.held.tables,
                &mut taken_tables,
            )?;
            explicit(index, "mark", ids.mark, &self.held.marks, &mut taken_marks)?;
            explicit(index, "zone", ids.zone, &self.held.zones, &mut taken_zones)?;
            if let Some(p) = ids.rule_priority {
                *taken_prios.entry(p).or_default() += 1;
            }
        }
        for (index, side) in valid.sides.iter().enumerate() {
            let before = previous
                .filter(|p| p.mark_mask == self.ranges.mark_mask)
                .and_then(|p| p.sides.iter().find(|s| s.side == side.name.as_str()));
            let ids = &side.kernel_ids;
            if let Some(mark) = ids.mark
                && mark & !self.ranges.mark_mask != 0
            {
                return Err(AllocationError::MarkOutsideMask {
                    index,
                    value: mark,
                    mask: self.ranges.mark_mask,
                });
            }
            let table = pick(
                "table",
                ids.table,
                before.map(|b| b.table),
                &self.held.tables,
                &mut taken_tables,
                self.ranges.tables.clone(),
            )?;
            let mark = pick(
                "mark",
                ids.mark,
                before.map(|b| b.mark),
                &self.held.marks,
                &mut taken_marks,
                self.ranges.marks(),
            )?;
            let zone = pick(
                "zone",
                ids.zone,
                before.map(|b| b.zone),
                &self.held.zones,
                &mut taken_zones,
                self.ranges.zones.clone(),
            )?;
            let rule_priority = match ids.rule_priority {
                // Counted above.
                Some(explicit) => explicit,
                None => {
                    let p = before
                        .map(|b| b.rule_priority)
                        .or_else(|| {
                            least_used(
                                &self.held.rule_priorities,
                                &taken_prios,
                                self.ranges.rule_priorities.clone(),
                            )
                        })
                        .ok_or_else(|| AllocationError::Exhausted {
                            what: "rulePriority",
                            range: "(empty)".into(),
                        })?;
                    *taken_prios.entry(p).or_default() += 1;
                    p
                }
            };
            sides.push(SideAllocation {
                side: side.name.to_string(),
                table,
                mark,
                zone,
                rule_priority,
            });
        }
        Ok(Allocation {
            mark_mask: self.ranges.mark_mask,
            sides,
        })
    }
}

/// The priority in `range` the fewest sides use (held by other networks plus `taken` by this
/// one), the lowest among equals; `None` only for an empty range.
fn least_used(
    held: &BTreeMap<u32, usize>,
    taken: &BTreeMap<u32, usize>,
    range: RangeInclusive<u32>,
) -> Option<u32> {
    let used = |p: &u32| held.get(p).unwrap_or(&0) + taken.get(p).unwrap_or(&0);
    // `min_by_key` keeps the first of equal keys: the lowest priority.
    range.min_by_key(used)
}

/// Claims an explicit id, refusing one another network (or another side) holds.
fn explicit<T: Ord + Copy + Into<u64>>(
    index: usize,
    field: &'static str,
    value: Option<T>,
    held: &BTreeMap<T, String>,
    taken: &mut BTreeSet<T>,
) -> Result<(), AllocationError> {
    let Some(value) = value else { return Ok(()) };
    if let Some(holder) = held.get(&value) {
        return Err(AllocationError::ExplicitIdTaken {
            index,
            field,
            value: value.into(),
            holder: holder.clone(),
        });
    }
    if !taken.insert(value) {
        return Err(AllocationError::ExplicitIdTaken {
            index,
            field,
            value: value.into(),
            holder: "another side of this network".into(),
        });
    }
    Ok(())
}

/// One id: the explicit one (already claimed), else the previous one if still free, else the
/// lowest free one in `range`.
fn pick<T: Ord + Copy + Into<u64> + std::fmt::Debug>(
    field: &'static str,
    explicit: Option<T>,
    previous: Option<T>,
    held: &BTreeMap<T, String>,
    taken: &mut BTreeSet<T>,
    mut range: impl Iterator<Item = T> + Clone,
) -> Result<T, AllocationError> {
    if let Some(value) = explicit {
        return Ok(value);
    }
    if let Some(value) = previous
        && !held.contains_key(&value)
        && taken.insert(value)
    {
        return Ok(value);
    }
    let all = range.clone();
    let value = range
        .find(|v| !held.contains_key(v) && !taken.contains(v))
        .ok_or_else(|| {
            let (first, last) = (all.clone().next(), all.last());
            AllocationError::Exhausted {
                what: field,
                range: match (first, last) {
                    (Some(a), Some(b)) => format!("{a:?}-{b:?}"),
                    _ => "(empty)".into(),
                },
            }
        })?;
    taken.insert(value);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::v1alpha1::{Side, SideKernelIds};

    fn ranges(rule_priorities: RangeInclusive<u32>) -> IdRanges {
        IdRanges {
            rule_priorities,
            ..IdRanges::default()
        }
    }

    /// A two-sided network on interfaces `<tag>a`, `<tag>b`, with optional explicit priorities.
    fn network(tag: &str, priorities: [Option<u32>; 2]) -> ValidNetwork {
        let sides = ["a", "b"]
            .iter()
            .zip(priorities)
            .enumerate()
            .map(|(i, (side, rule_priority))| Side {
                alias_prefix: format!("192.168.{}.0/24", 10 + i),
                kernel_ids: rule_priority.map(|p| SideKernelIds {
                    rule_priority: Some(p),
                    ..Default::default()
                }),
                ..fixtures::side(side, &format!("{tag}{side}"))
            })
            .collect();
        let spec = fixtures::spec(sides);
        crate::validate(&spec).unwrap()
    }

    fn priorities(a: &Allocation) -> Vec<u32> {
        a.sides.iter().map(|s| s.rule_priority).collect()
    }

    #[test]
    fn flags_give_the_ranges_back_and_errors_name_the_flag() {
        assert_eq!(RangeFlags::default().ranges(), Ok(IdRanges::default()));
        let wide = IdRanges {
            mark_mask: 0xfff0_0000,
            zones: 1..=65535,
            ..IdRanges::default()
        };
        assert_eq!(RangeFlags::from(&wide).ranges(), Ok(wide));
        let with = |edit: fn(&mut RangeFlags)| {
            let mut flags = RangeFlags::default();
            edit(&mut flags);
            flags.ranges().unwrap_err().to_string()
        };
        for (error, expected) in [
            (
                with(|f| f.table_range = "5".into()),
                "--table-range: \"5\" is not FIRST-LAST",
            ),
            (
                with(|f| f.table_range = "200-300".into()),
                "--table-range: must not include",
            ),
            (
                with(|f| f.zone_range = "1-70000".into()),
                "--zone-range: 70000 is above",
            ),
            (
                with(|f| f.rule_priority_range = "900-1200".into()),
                "--rule-priority-range: must lie within 1-999",
            ),
            (
                with(|f| f.rule_priority_range = "600-500".into()),
                "--rule-priority-range: 600 is above 500",
            ),
            (
                with(|f| f.mark_mask = "0x0f0f0000".into()),
                "--mark-mask: 0x0f0f0000 must be one contiguous",
            ),
            (
                with(|f| f.mark_mask = "ff".into()),
                "--mark-mask: \"ff\" is not a number",
            ),
        ] {
            assert!(error.starts_with(expected), "{error}");
        }
        assert_eq!(
            RangeFlags::default().args(),
            [
                "--table-range",
                "20000-29999",
                "--zone-range",
                "40000-49999",
                "--rule-priority-range",
                "500-999",
                "--mark-mask",
                "0xff000000"
            ]
        );
    }

    #[test]
    fn priorities_go_to_the_least_used_then_are_shared_evenly() {
        let mut allocator = Allocator::new(ranges(500..=502));
        let got: Vec<Vec<u32>> = (0..4)
            .map(|n| {
                let a = allocator
                    .allocate(&format!("net-{n}"), &network("e", [None, None]))
                    .unwrap();
                priorities(&a)
            })
            .collect();
        // Three priorities for eight sides: every priority used by two or three sides, the
        // lowest first on ties.
        assert_eq!(
            got,
            vec![
                vec![500, 501],
                vec![502, 500],
                vec![501, 502],
                vec![500, 501]
            ]
        );
        let usage = allocator.usage().rule_priorities;
        assert_eq!((usage.held, usage.capacity), (3, 3));
        // Tables, marks and zones stayed unique.
        let tables: BTreeSet<u32> = (0..4)
            .flat_map(|n| allocator.get(&format!("net-{n}")).unwrap().sides.clone())
            .map(|s| s.table)
            .collect();
        assert_eq!(tables.len(), 8);
    }

    #[test]
    fn a_released_priority_is_the_least_used_again() {
        let mut allocator = Allocator::new(ranges(500..=503));
        for n in 0..3 {
            allocator
                .allocate(&format!("net-{n}"), &network("e", [None, None]))
                .unwrap();
        }
        // net-0 held 500 and 501; net-1 502, 503; net-2 500, 501 again.
        allocator.release("net-1");
        assert_eq!(allocator.usage().rule_priorities.held, 2);
        let a = allocator
            .allocate("net-3", &network("e", [None, None]))
            .unwrap();
        assert_eq!(priorities(&a), vec![502, 503]);
        // Releasing the last user of a priority frees it in the usage count.
        allocator.release("net-3");
        allocator.release("net-2");
        assert_eq!(allocator.usage().rule_priorities.held, 2);
        allocator.release("net-0");
        assert_eq!(allocator.usage().rule_priorities.held, 0);
    }

    #[test]
    fn an_explicit_priority_may_equal_another_networks() {
        let mut allocator = Allocator::new(IdRanges::default());
        let first = allocator
            .allocate("first", &network("e", [None, None]))
            .unwrap();
        assert_eq!(priorities(&first), vec![500, 501]);
        let second = allocator
            .allocate("second", &network("f", [Some(500), Some(500)]))
            .unwrap();
        assert_eq!(priorities(&second), vec![500, 500]);
        // The next free choice avoids the priority now used three times.
        let third = allocator
            .allocate("third", &network("g", [None, None]))
            .unwrap();
        assert_eq!(priorities(&third), vec![502, 503]);
    }

    #[test]
    fn a_priority_is_kept_for_the_networks_life_even_when_less_used_ones_appear() {
        let mut allocator = Allocator::new(ranges(500..=502));
        allocator
            .allocate("a", &network("e", [None, None]))
            .unwrap();
        let b = allocator
            .allocate("b", &network("f", [None, None]))
            .unwrap();
        assert_eq!(priorities(&b), vec![502, 500]);
        // Without a, fresh choices would be 500 and 501; b keeps what it has.
        allocator.release("a");
        let again = allocator
            .allocate("b", &network("f", [None, None]))
            .unwrap();
        assert_eq!(priorities(&again), vec![502, 500]);
    }

    #[test]
    fn explicit_tables_marks_and_zones_stay_exclusive() {
        let mut allocator = Allocator::new(IdRanges::default());
        let first = allocator
            .allocate("first", &network("e", [None, None]))
            .unwrap();
        let mut second = network("f", [None, None]);
        second.sides[0].kernel_ids.table = Some(first.sides[0].table);
        let err = allocator.allocate("second", &second).unwrap_err();
        assert!(
            matches!(&err, AllocationError::ExplicitIdTaken { field: "table", holder, .. } if holder == "first"),
            "{err}"
        );
    }

    #[test]
    fn rebuilding_counts_shared_priorities_again() {
        let mut allocator = Allocator::new(ranges(500..=500));
        for n in 0..3 {
            allocator
                .allocate(&format!("net-{n}"), &network("e", [None, None]))
                .unwrap();
        }
        let recorded: Vec<(String, Allocation)> = allocator
            .networks()
            .map(|n| (n.to_owned(), allocator.get(n).unwrap().clone()))
            .collect();
        let mut rebuilt = Allocator::from_existing(
            ranges(500..=500),
            recorded.iter().map(|(n, a)| (n.as_str(), a)),
        );
        assert_eq!(rebuilt.usage(), allocator.usage());
        rebuilt.release("net-0");
        rebuilt.release("net-1");
        assert_eq!(rebuilt.usage().rule_priorities.held, 1);
        rebuilt.release("net-2");
        assert_eq!(rebuilt.usage().rule_priorities.held, 0);
    }
}
