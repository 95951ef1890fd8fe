//! Whether a network's `nodeSelector` selects a node, evaluated against the node's labels as
//! the API server would: one definition for the operator (which nodes it waits for) and the
//! agent (whether its own node programs the network), so the two can never disagree.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::labels;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

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
