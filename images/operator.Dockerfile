# syntax=docker/dockerfile:1
# The operator image: the mirrornet-operator binary on distroless (glibc, CA certificates, no
# shell), running as the distroless "nonroot" user 65532 — the user the chart's Pod Security
# "restricted" context names. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t mirrornet/mirrornet-operator:0.1.0 .
#
# CI builds the same image without a container engine: `cargo xtask images` (xtask/src/images.rs)
# unpacks the Debian 12 packages distroless cc-debian12 is made of (libc6, libgcc-s1, libgomp1,
# libstdc++6, libssl3, ca-certificates, tzdata, netbase, base-files), writes distroless' passwd and
# group (nonroot 65532), removes every program, adds the release binary as a second layer with
# umoci and writes target/images/mirrornet-operator.oci.tar. The xtask's `OPERATOR` constant
# (base release, binary path, user, entrypoint) is checked against this file's final stage by
# xtask's tests, and the built archive (user 65532, no shell) after every build. Change both
# together.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --package mirrornet-operator --bin mirrornet-operator

# Debian 12 like the build stage, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mirrornet-operator /usr/local/bin/mirrornet-operator
USER 65532:65532
# Every setting comes from flags or their environment variables (see --help).
ENTRYPOINT ["/usr/local/bin/mirrornet-operator"]
