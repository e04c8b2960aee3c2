# weft-proxy: the sidecar, and (as `weft-proxy init`) the init container's nat rules.
# Build from the repository root:
#   docker build -f images/weft-proxy.Dockerfile -t weft/weft-proxy:0.1.0 .
# The uid and ports below must equal `weft inject`'s defaults (control-plane/tests/images.rs).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-proxy --bin weft-proxy

# The init step runs iptables/nft; the sidecar itself needs nothing but the binary.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft-proxy /usr/local/bin/weft-proxy
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
