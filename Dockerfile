# syntax=docker/dockerfile:1
# Multi-stage build: compile with the full toolchain, run from a small non-root image.
#
#   DOCKER_BUILDKIT=1 docker build -t gcore-gateway \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Base images are pinned by digest, so a rebuild uses the same bytes until someone moves the
# pin on purpose. To refresh (and review what changed):
#   docker buildx imagetools inspect rust:1.95.0-slim-bookworm          # "Digest:" of the index
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# Keep the Rust version equal to rust-toolchain.toml's channel.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# What the build reads: the manifests, the sources, and the files they embed (config/demo.toml,
# tests/fixtures/*.json) or declare as targets (benches, examples). The image's gcc builds
# AWS-LC (rustls's crypto provider); nothing else is installed.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY tests/fixtures ./tests/fixtures
COPY benches ./benches
COPY examples ./examples
# BuildKit cache mounts keep the crate registry and the target directory between builds, so a
# source change recompiles only this crate, not its ~300 dependencies. The binary is copied out
# of the cached target directory (which is not part of the image layer).
RUN --mount=type=cache,id=gcore-gateway-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=gcore-gateway-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gcore-gateway-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin gcore-gateway \
 && install -D -m 0755 target/release/gcore-gateway /out/gcore-gateway \
 && strip /out/gcore-gateway

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gcore-gateway" \
      org.opencontainers.image.description="Caching reverse-proxy gateway for the Gcore API: hides the upstream key, caches and coalesces, rate-limits and redacts per caller." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/gcore-gateway /usr/local/bin/gcore-gateway
COPY LICENSE /usr/share/doc/gcore-gateway/LICENSE
# The image's own config: callers on 0.0.0.0:8080, admin on the container's loopback only, and
# no client key that anyone has (mount your own config over it).
COPY config/container.toml /etc/gcore-gateway/gateway.toml
ENV GCORE_GATEWAY_CONFIG=/etc/gcore-gateway/gateway.toml
# Caller port; admin port (reachable from outside only with a config that listens on 0.0.0.0).
EXPOSE 8080 9090
# distroless "nonroot", numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# No shell or curl in the image: the binary reads GCORE_GATEWAY_CONFIG and probes /healthz on
# its server.admin_listen, so the check follows whatever config is mounted.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/gcore-gateway", "health"]
ENTRYPOINT ["/usr/local/bin/gcore-gateway"]
CMD ["serve"]
