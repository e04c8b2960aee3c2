# weft: the control plane (`weft serve`) and the CLI.
# Build from the repository root:
#   docker build -f images/weft.Dockerfile -t weft/weft:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-control --bin weft

# No shell or package manager at run time.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/weft /usr/local/bin/weft
USER 2102:2102
EXPOSE 8086 9990
ENTRYPOINT ["/usr/local/bin/weft"]
