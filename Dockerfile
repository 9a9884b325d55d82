# syntax=docker/dockerfile:1
# Multi-stage build: compile with the full toolchain, run from a small non-root image.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY tests/fixtures ./tests/fixtures
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin gcore-gateway \
 && strip target/release/gcore-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gcore-gateway /usr/local/bin/gcore-gateway
COPY config/gateway.toml /etc/gcore-gateway/gateway.toml
ENV GCORE_GATEWAY_CONFIG=/etc/gcore-gateway/gateway.toml
# Caller port and admin port (set server.listen / admin_listen to 0.0.0.0 in the mounted config).
EXPOSE 8080 9090
USER nonroot:nonroot
# The image has no shell or curl: the binary probes its own admin /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/gcore-gateway", "health", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/gcore-gateway"]
CMD ["serve"]
