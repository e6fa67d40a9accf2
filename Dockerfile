# syntax=docker/dockerfile:1
# One image for every role: `ingest`, `process`, `query` (or `up` for all).
# Build: docker build -t spendstream:dev .

FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys (zlib, zstd bundled).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin spendstream \
 && cp target/release/spendstream /usr/local/bin/spendstream

FROM debian:bookworm-slim
# /lake is made here, owned by the service user: a named volume mounted on it
# takes that owner, so the processors can write the lake volume.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/spendstream --create-home spendstream \
 && install -d -o spendstream -g spendstream /lake
COPY --from=build /usr/local/bin/spendstream /usr/local/bin/spendstream
USER spendstream
WORKDIR /var/lib/spendstream
ENV SPENDSTREAM_DATA_DIR=/var/lib/spendstream \
    SPENDSTREAM_LISTEN=0.0.0.0:8080 \
    SPENDSTREAM_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["spendstream"]
CMD ["up"]
