#!/bin/bash
# Builds the test control plane and the real node's kubelet and containerd from the Go modules
# beside this file and prints the directory holding the binaries. The directory is outside the work tree and named after the
# pinned versions and the modules' go.sum, so a second run on the same machine builds nothing
# and a version bump builds anew beside the old one. Go's own build and module caches
# (~/.cache/go-build, ~/go/pkg/mod) make a rebuild after a bump incremental.
set -euo pipefail
cd "$(dirname "$0")"
source ./versions.env
key=$(cat build.sh versions.env */go.mod */go.sum | sha256sum | cut -c1-12)
cache=${MIRRORNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrornet}
bin="$cache/k8s-$KUBERNETES-$key/bin"
if [ -f "$bin/.complete" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$bin"
# Static, stripped, without VCS stamping: the binaries are only ever run by the tests.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
started=$(date +%s)
# Each binary reports the release it was built from, as a release build does: helm checks a
# chart's kubeVersion against the API server's, and a `v0.0.0-master` would fail it.
minor=${KUBERNETES#v1.}; minor=${minor%%.*}
kube_version="-X k8s.io/component-base/version.gitVersion=$KUBERNETES \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES \
-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
declare -A stamp=(
    [kubernetes]=$kube_version
    [etcd]=""
    [helm]="-X helm.sh/helm/v3/internal/version.version=$HELM"
    [containerd]="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD"
)
for module in kubernetes etcd helm containerd; do
    echo "building $module tools into $bin" >&2
    (cd "$module" && go build -ldflags="-s -w ${stamp[$module]}" -o "$bin/" tool)
done
[ -x "$bin/server" ] && mv "$bin/server" "$bin/etcd"   # etcd's main package is named after its directory
touch "$bin/.complete"
echo "built in $(( $(date +%s) - started )) s" >&2
echo "$bin"
