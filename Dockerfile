# One image with the four services and kairosctl; docker-compose.yml picks the binary per service.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kairos-trigger -p kairos-dispatcher -p kairos-worker \
      -p kairos-aggregator -p kairosctl && \
    mkdir /out && cp target/release/kairos-trigger target/release/kairos-dispatcher \
      target/release/kairos-worker target/release/kairos-aggregator target/release/kairosctl /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY topics/ /etc/kairos/topics/
# Volumes are mounted at /var/lib/kairos; the services run unprivileged.
RUN mkdir -p /var/lib/kairos && chown 65534:65534 /var/lib/kairos
USER 65534
ENV KAIROS_DATA_DIR=/var/lib/kairos
# 9404: /metrics, /healthz, /debug/state of every service; 8080: the aggregator's API.
EXPOSE 9404 8080
