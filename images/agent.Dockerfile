# syntax=docker/dockerfile:1
# The agent image: the mirrornet-agent binary on Debian slim with the `nft` binary, which the
# agent runs (`nft -j -f -` to apply its table in one transaction, `nft -j list` to observe).
# It runs as root with only NET_ADMIN (the operator's DaemonSet drops every other capability).
# Build from the repository root:
#   docker build -f images/agent.Dockerfile -t mirrornet/mirrornet-agent:0.1.0 .
#
# CI builds the same image without a container engine: `cargo xtask images` (xtask/src/images.rs)
# makes the base with `debootstrap --variant=minbase` of the same release plus the same packages,
# trimmed as -slim is, adds the release binary as a second layer with umoci and writes
# target/images/mirrornet-agent.oci.tar. Both builds read their facts from one place each: the
# xtask's `AGENT` constant (release, packages, binary path, user, entrypoint, cmd) is checked
# against this file's final stage by xtask's tests, and the built archive's config and file list
# are checked after every build. Change both together.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --package mirrornet-agent --bin mirrornet-agent

# Debian 12: nftables 1.0.6, the version the agent's nft syntax was measured against.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mirrornet-agent /usr/local/bin/mirrornet-agent
ENTRYPOINT ["/usr/local/bin/mirrornet-agent"]
# The operator's DaemonSet passes its own arguments (`run ...`); this is for `docker run`.
CMD ["--help"]
