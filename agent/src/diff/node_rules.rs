//! Node rules: the node-wide rules that take traffic without a mirrornet mark past every mark
//! rule, so that the node's own traffic does not pay for the number of networks.

use std::collections::{BTreeMap, BTreeSet};

use super::{Diff, Ownership};
use crate::observe::KernelView;
use crate::plan::{L3MDEV_PRIORITY, NetworkPlan, ON_LINK_PRIORITY, Rule, RuleSelector};
use crate::step::{NODE, Phase, Step};

/// The skip rules the node will need, from the span of every mark rule it will hold: the
/// planned networks' and those of networks this change leaves alone.
pub(super) fn skip_rules(
    diff: &mut Diff,
    view: &KernelView,
    owned: &Ownership,
    plans: &[NetworkPlan],
    remove: &[String],
) {
    let changing: BTreeSet<u32> = plans
        .iter()
        .flat_map(|p| owned.of(&p.name, Some(p)).0)
        .chain(remove.iter().flat_map(|n| owned.of(n, None).0))
        .collect();
    let mark_rules = plans.iter().flat_map(|p| p.rules.iter()).chain(
        view.rules
            .iter()
            .filter(|r| r.table != 0 && !changing.contains(&r.table)),
    );
    let wanted = wanted(mark_rules);
    // Where a side relies on an `iif` rule (an older agent's layout), unmarked traffic may
    // skip the mark rules only once the nft transaction marks every side's own traffic.
    let legacy = view
        .rules
        .iter()
        .any(|r| matches!(r.selector, RuleSelector::Iif(_)) && r.priority != ON_LINK_PRIORITY);
    let phase = if legacy {
        Phase::LegacySkipRules
    } else {
        Phase::SkipRules
    };
    let have = view.rules.iter().filter(|r| {
        matches!(
            r.selector,
            RuleSelector::Unmarked { .. } | RuleSelector::SkipTarget
        )
    });
    // A skip rule that moves goes before its successor is added: the kernel holds one rule
    // per priority and selector, whatever its goto target. Taking it away costs only speed.
    for rule in have.filter(|r| !wanted.contains(r)) {
        let step = Step::DeleteRule {
            network: NODE.into(),
            rule: rule.clone(),
        };
        match rule.selector {
            RuleSelector::Unmarked { .. } => diff.push(phase, step),
            _ => diff.push(Phase::WithdrawRules, step),
        }
    }
    // The target first: a goto to a priority nobody holds is left unresolved by the kernel.
    let mut missing: Vec<&Rule> = wanted.iter().filter(|r| !view.rules.contains(r)).collect();
    missing.sort_by_key(|r| matches!(r.selector, RuleSelector::Unmarked { .. }));
    for rule in missing {
        diff.push(
            phase,
            Step::AddRule {
                network: NODE.into(),
                rule: rule.clone(),
            },
        );
    }
}

/// The node-wide rules that take traffic without a mirrornet mark past every mark rule, per
/// family: `fwmark 0/mask goto <after the last mark rule>` just before the first, and the
/// no-op rule it jumps to. None where no mark rule is left, or the first sits at priority 1
/// (nothing fits before it but the local table's rule). The target is the l3mdev rule's
/// priority (1000) while every mark rule precedes it, as allocated ones do: it stays put as
/// networks come and go, so adding one does not move the skip rule. The mask is every mark
/// rule's mask together: a packet with any of those bits set is someone's, whatever mask each
/// network was allocated under.
fn wanted<'a>(rules: impl Iterator<Item = &'a Rule>) -> Vec<Rule> {
    let mut span: BTreeMap<bool, (u32, u32, u32)> = BTreeMap::new();
    for rule in rules {
        let RuleSelector::Mark { mask, .. } = rule.selector else {
            continue;
        };
        let (low, high, bits) = span
            .entry(rule.ipv6)
            .or_insert((rule.priority, rule.priority, 0));
        *low = (*low).min(rule.priority);
        *high = (*high).max(rule.priority);
        *bits |= mask;
    }
    span.into_iter()
        .filter(|(_, (low, high, _))| *low >= 2 && *high < u32::MAX)
        .flat_map(|(ipv6, (low, high, mask))| {
            let high = high.max(L3MDEV_PRIORITY - 1);
            [
                Rule {
                    ipv6,
                    priority: low - 1,
                    selector: RuleSelector::Unmarked {
                        mask,
                        target: high + 1,
                    },
                    table: 0,
                },
                Rule {
                    ipv6,
                    priority: high + 1,
                    selector: RuleSelector::SkipTarget,
                    table: 0,
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_rule(ipv6: bool, priority: u32) -> Rule {
        Rule {
            ipv6,
            priority,
            selector: RuleSelector::Mark {
                value: priority << 24,
                mask: 0xff00_0000,
            },
            table: 20000 + priority,
        }
    }

    #[test]
    fn the_skip_rule_spans_every_mark_rule_of_its_family() {
        let rules = [
            mark_rule(false, 503),
            mark_rule(false, 500),
            mark_rule(false, 507),
            mark_rule(true, 510),
        ];
        let skips = wanted(rules.iter());
        let shown: Vec<String> = skips.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "499 fwmark 0x0/0xff000000 goto 1000",
                "1000 nop",
                "-6 509 fwmark 0x0/0xff000000 goto 1000",
                "-6 1000 nop",
            ]
        );
        assert!(wanted(std::iter::empty()).is_empty());
        // Nothing fits between the local table's rule at 0 and a mark rule at 1.
        assert!(wanted([mark_rule(false, 1)].iter()).is_empty());
        // An explicit priority past the l3mdev rule takes the target with it, and with
        // networks allocated under different masks only a packet unmarked under all skips.
        let mut wide = mark_rule(false, 4000);
        wide.selector = RuleSelector::Mark {
            value: 0x0010_0000,
            mask: 0xfff0_0000,
        };
        let far = wanted([mark_rule(false, 500), wide].iter());
        assert_eq!(far[0].to_string(), "499 fwmark 0x0/0xfff00000 goto 4001");
    }
}
