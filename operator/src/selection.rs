//! Which nodes a network selects: its `nodeSelector` evaluated against node labels, as the
//! API server would, and the node facts (exists, kubelet Ready since when) the decisions need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// True when `selector` selects a node with `labels`. An absent selector selects nothing
/// (so a network without one is inert); an empty one selects everything.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // The API server rejects other operators; an unknown one selects nothing.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// What the operator knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` while the kubelet reports Ready; otherwise since when it has not (the Ready
    /// condition's last transition, or `None` inside when unknown).
    pub not_ready_since: Option<Option<Timestamp>>,
}

impl NodeFacts {
    /// Reads the facts from a Node object.
    pub fn of(node: &Node) -> Self {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let not_ready_since = match ready {
            Some(c) if c.status == "True" => None,
            Some(c) => Some(c.last_transition_time.as_ref().map(|t| t.0)),
            None => Some(None),
        };
        Self {
            name: node.name_any(),
            labels: node.labels().clone(),
            not_ready_since,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_since.is_none()
    }
}

/// The nodes `selector` selects, by name.
pub fn selected<'a>(
    selector: Option<&LabelSelector>,
    nodes: &'a [NodeFacts],
) -> impl Iterator<Item = &'a NodeFacts> {
    nodes.iter().filter(move |n| selects(selector, &n.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_semantics() {
        let gw = labels(&[("mirrornet.io/gateway", "true"), ("zone", "a")]);
        let plain = labels(&[("zone", "b")]);
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("mirrornet.io/gateway", "true")])),
            ..Default::default()
        };
        /// (case, selector, node labels, selected)
        type Row<'a> = (
            &'a str,
            Option<LabelSelector>,
            &'a BTreeMap<String, String>,
            bool,
        );
        let table: Vec<Row> = vec![
            ("absent selects nothing", None, &gw, false),
            (
                "empty selects all",
                Some(LabelSelector::default()),
                &plain,
                true,
            ),
            ("matchLabels hit", Some(by_label.clone()), &gw, true),
            ("matchLabels miss", Some(by_label), &plain, false),
            (
                "In",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("zone", "In", &["a", "c"])]),
                    ..Default::default()
                }),
                &gw,
                true,
            ),
            (
                "NotIn on missing key",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("rack", "NotIn", &["r1"])]),
                    ..Default::default()
                }),
                &gw,
                true,
            ),
            (
                "Exists",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("mirrornet.io/gateway", "Exists", &[])]),
                    ..Default::default()
                }),
                &plain,
                false,
            ),
            (
                "DoesNotExist",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr(
                        "mirrornet.io/gateway",
                        "DoesNotExist",
                        &[],
                    )]),
                    ..Default::default()
                }),
                &plain,
                true,
            ),
        ];
        for (name, selector, labels, expected) in table {
            assert_eq!(selects(selector.as_ref(), labels), expected, "{name}");
        }
    }
}
