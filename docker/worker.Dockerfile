# syntax=docker/dockerfile:1.7
# The worker image: `weir-worker`, what every StreamingJob pod runs. Build
# from the repository root:
#   docker build -f docker/worker.Dockerfile -t ghcr.io/weir-dev/weir-worker:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# libclang for RocksDB's bindgen; a C/C++ toolchain, cmake and perl for
# RocksDB and librdkafka; headers of the libraries librdkafka links.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang libclang-dev cmake perl pkg-config \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev liblz4-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-worker --bin weir-worker \
 && cp target/release/weir-worker /usr/local/bin/weir-worker \
 && ldd /usr/local/bin/weir-worker

# A slim runtime with exactly the shared libraries the worker links
# (OpenSSL for Kafka TLS, zlib, zstd, lz4, SASL) and CA certificates for
# TLS to brokers and object storage.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g libzstd1 liblz4-1 libsasl2-2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 weir \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin weir \
 && install -d -o 65532 -g 65532 /var/lib/weir/state
COPY --from=build /usr/local/bin/weir-worker /usr/local/bin/weir-worker
USER 65532:65532
ENV WEIR_STATE_DIR=/var/lib/weir/state \
    WEIR_HTTP_ADDR=0.0.0.0:9400
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/weir-worker"]
