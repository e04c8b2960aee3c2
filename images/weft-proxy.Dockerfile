# weft-proxy: the sidecar, and (as `weft-proxy init`) the init container's nat rules.
# Build from the repository root:
#   docker build -f images/weft-proxy.Dockerfile -t weft/weft-proxy:0.1.0 .
# On arm64: --build-arg TARGET=aarch64-unknown-linux-gnu.
# The uid and ports below must equal `weft inject`'s defaults (control-plane/tests/images.rs).
FROM rust:1-bookworm AS build
ARG TARGET=x86_64-unknown-linux-gnu
WORKDIR /src
COPY . .
# Statically linked (glibc, crt-static): without native sidecars `weft inject` copies this binary
# into a Job's app containers to run `weft-proxy await`, and their images may have another libc
# or none (alpine, distroless). `--target` keeps the flag off build scripts and proc-macros,
# which must stay dynamic. `await` calls only numeric addresses; the sidecar's DNS lookups go
# through glibc's NSS, which this image's own glibc (the build image's version) serves.
# Debug info is stripped (symbols stay, for backtraces): the copy lives in memory.
RUN RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --target "$TARGET" -p weft-proxy --bin weft-proxy \
    && cp "target/$TARGET/release/weft-proxy" /weft-proxy

# The init step runs iptables/nft; the sidecar itself needs nothing but the binary. `cp` copies
# it into Job pods (the weft-bin init container).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /weft-proxy /usr/local/bin/weft-proxy
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
