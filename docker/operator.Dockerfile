# syntax=docker/dockerfile:1.7
# The operator image: `weir operator` (also `weir crd`, `weir validate`,
# `weir render`). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/weir-dev/weir-operator:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# cmake and clang for aws-lc-rs, the rustls crypto provider (TLS to the API
# server and to object storage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Only the operator and its dependencies are built (no RocksDB, no librdkafka);
# TLS goes through rustls, so the binary needs no OpenSSL at run time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-operator --bin weir \
 && cp target/release/weir /usr/local/bin/weir

# glibc and libgcc only, no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/weir /usr/local/bin/weir
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["operator"]
