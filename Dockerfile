# syntax=docker/dockerfile:1
# tugboat: one image for the init container (`tugboat pull`), the CSI node plugin and the
# cache warmer (`tugboat node`). Build with a Docker engine (or buildah/kaniko):
#   docker build -t harbor.example.com/platform/tugboat:0.1.0 .
# The node plugin needs to mount: that is granted by the DaemonSet's privileged
# securityContext, not by anything in this image.

ARG RUST_VERSION=1.95

# ---- build: the release binary ------------------------------------------------------------
# Its only build command is scripts/build-release.sh, which tests/manifests.rs also runs (into
# target/image/) so the binary shipped here is the one the manifests are tested with.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ENV OUT=/out
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh "$OUT"

# ---- runtime: glibc + CA certificates, no shell, no package manager ---------------------------
# distroless/cc carries libc, libgcc and /etc/ssl/certs (tugboat verifies registries' TLS with
# the system roots; add a private CA with --ca-file). It runs as root by default, which the
# node plugin needs; init containers set runAsUser in their securityContext.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/tugboat /usr/local/bin/tugboat
ENTRYPOINT ["/usr/local/bin/tugboat"]
CMD ["--help"]
