//! The MirrorNetwork API: its types, the CRD generated from them, the spec validation that the
//! operator and the agent share, and the vocabulary both report in: conditions, their reasons
//! and the rule that stamps them, and events.
//!
//! ```text
//! user YAML ──> v1alpha1::MirrorNetwork ──validate()──> ValidNetwork ──> operator / agent
//!                     │
//!                     └── crd() ──> crds/mirrornetwork.yaml (committed, checked by a test)
//! ```

pub mod allocation;
pub mod conditions;
pub mod events;
pub mod file;
#[cfg(feature = "testing")]
pub mod fixtures;
#[cfg(feature = "testing")]
pub mod mock_api;
pub mod selection;
pub mod v1alpha1;
pub mod validation;

pub use k8s_openapi;
pub use kube;
pub use v1alpha1::{
    Allocation, AllowedTraffic, Backend, BackendKind, Direction, MirrorNetwork, MirrorNetworkSpec,
    MirrorNetworkStatus, NodeStatus, Probe, Protocol, Side, SideAllocation, SideKernelIds, Verify,
};
pub use validation::{
    FieldError, SpecErrors, ValidAllow, ValidNetwork, ValidProbe, ValidSide, validate,
};

/// API group of every mirrornet resource.
pub const GROUP: &str = "mirrornet.io";

/// The operator's finalizer: it holds a network until every node removed its kernel state.
pub const FINALIZER: &str = "mirrornet.io/teardown";

/// Where the generated CRD is committed, relative to the workspace root.
pub const CRD_PATH: &str = "crds/mirrornetwork.yaml";

/// The command that rewrites [`CRD_PATH`] from the types.
pub const CRD_REGENERATE: &str =
    "cargo run -p mirrornet-api --bin crdgen > crds/mirrornetwork.yaml";

/// The CRD as YAML, exactly as committed at [`CRD_PATH`].
/// Removes schemars' `format: uint16` / `uint32` (Rust's unsigned types): Kubernetes knows
/// no such formats and warns about each on every install of the CRD. The ranges stay, as the
/// schema's `minimum` and `maximum`.
fn drop_unsigned_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let unsigned = map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"));
            if unsigned {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unsigned_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unsigned_formats),
        _ => {}
    }
}

pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(MirrorNetwork::crd()).expect("a CRD always serializes");
    drop_unsigned_formats(&mut crd);
    let body = serde_saphyr::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated from crds/src/v1alpha1.rs; do not edit. Regenerate with:\n#   {CRD_REGENERATE}\n{body}"
    )
}
