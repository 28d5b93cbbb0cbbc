# The Waxwing image: `docker build -t waxwing .` (docker-compose.yml builds
# it too). Configuration at /etc/waxwing/waxwing.toml (mount yours; see
# docker/waxwing.toml), state (dev certificate, admin socket, a SQLite
# database if you use one) under /var/lib/waxwing.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin waxwing

FROM debian:bookworm-slim
# The system's CA roots: outgoing s2s streams check peers' certificates
# against them (and `[s2s] ca_file`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/waxwing --create-home waxwing \
    && mkdir -p /var/lib/waxwing/certs /etc/waxwing \
    && chown -R waxwing:waxwing /var/lib/waxwing
COPY --from=build /src/target/release/waxwing /usr/local/bin/waxwing
COPY docker/waxwing.toml /etc/waxwing/waxwing.toml
USER waxwing
WORKDIR /var/lib/waxwing
VOLUME /var/lib/waxwing
# c2s STARTTLS and direct TLS, s2s and s2s direct TLS, HTTP and HTTPS
# (WebSocket, BOSH, upload, /metrics) — each only where the config
# listens on it.
EXPOSE 5222 5223 5269 5270 5280 5443
# SIGTERM: every stream closed with system-shutdown; SIGHUP: reload.
STOPSIGNAL SIGTERM
CMD ["waxwing", "serve", "--config", "/etc/waxwing/waxwing.toml"]
