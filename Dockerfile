# The one `gallop` binary in a small image. Build: `docker build -t gallop .`
# (docker-compose.yml builds it too). Runs as an unprivileged user; configure it with
# GALLOP_* environment variables or a mounted gallop.toml (GALLOP_CONFIG=/etc/gallop/gallop.toml).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by the rdkafka crate (make, gcc, perl: all in this image);
# OpenSSL and zlib headers come from the image as well.
COPY . .
RUN cargo build --release --locked --bin gallop \
 && cp target/release/gallop /gallop

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gallop
COPY --from=build /gallop /usr/local/bin/gallop
USER 10001:10001
# Gateway (ingest.listen) and processor status (consumer.listen).
EXPOSE 8080 9464
ENV GALLOP_INGEST__LISTEN=0.0.0.0:8080 \
    GALLOP_CONSUMER__LISTEN=0.0.0.0:9464
ENTRYPOINT ["/usr/local/bin/gallop"]
CMD ["run"]
