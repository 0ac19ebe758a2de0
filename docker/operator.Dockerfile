# syntax=docker/dockerfile:1.7
# The operator image: `weir operator` (also `weir crd`, `weir validate`,
# `weir render`, and `weir generate`, the load generator of e2e/). Build
# from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/weir-dev/weir-operator:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# The operator links the worker's engine (`weir run` runs workers
# in-process) and librdkafka (it reads consumer lag): libclang for RocksDB's
# bindgen, a C/C++ toolchain, cmake and perl for RocksDB, librdkafka and
# aws-lc-rs, and headers of the libraries librdkafka links.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang libclang-dev cmake perl pkg-config \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev liblz4-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-operator --bin weir \
 && cp target/release/weir /usr/local/bin/weir \
 && ldd /usr/local/bin/weir

# A slim runtime with exactly the shared libraries librdkafka links
# (OpenSSL for Kafka TLS, zlib, zstd, lz4, SASL) and CA certificates; runs as
# uid 65532.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g libzstd1 liblz4-1 libsasl2-2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 weir \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin weir
COPY --from=build /usr/local/bin/weir /usr/local/bin/weir
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["operator"]
