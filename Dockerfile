# One image with the four services and kairosctl; the compose file picks the binary per service.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bins && \
    mkdir /out && cp target/release/kairos-trigger target/release/kairos-dispatcher \
      target/release/kairos-worker target/release/kairos-aggregator target/release/kairosctl /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY topics/ /etc/kairos/topics/
USER 65534
ENV KAIROS_DATA_DIR=/var/lib/kairos
