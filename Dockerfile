FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin waxwing

FROM debian:bookworm-slim
COPY --from=build /src/target/release/waxwing /usr/local/bin/waxwing
EXPOSE 5222 5223
CMD ["waxwing", "serve", "--config", "/etc/waxwing/waxwing.toml"]
