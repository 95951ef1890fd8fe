//! Prints the MirrorNetwork CRD, the source of `crds/mirrornetwork.yaml` and the chart's copy.

fn main() {
    print!("{}", mirrornet_api::crd_yaml());
}
