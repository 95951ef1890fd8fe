//! The committed CRD is exactly what the types generate.

#[test]
fn committed_crd_matches_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::fs::read_to_string(root.join(mirrornet_api::CRD_PATH))
        .expect("crds/mirrornetwork.yaml is committed");
    let generated = mirrornet_api::crd_yaml();
    assert!(
        committed == generated,
        "{} is stale: the types in crds/src changed. Regenerate it with:\n    {}",
        mirrornet_api::CRD_PATH,
        mirrornet_api::CRD_REGENERATE
    );
}

#[test]
fn crd_declares_what_kubectl_users_rely_on() {
    use mirrornet_api::kube::CustomResourceExt;
    let crd = mirrornet_api::MirrorNetwork::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["mnet".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Desired", "Backend", "Subnet", "Reason", "Age"]
    );
    let yaml = mirrornet_api::crd_yaml();
    // status.nodes is a list-type map keyed by node name, so agents can own their entries.
    assert!(
        yaml.contains("- nodeName"),
        "status.nodes must be keyed by nodeName"
    );
}
