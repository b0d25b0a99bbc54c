# syntax=docker/dockerfile:1
# tugboat: one image for the init container (`tugboat pull`), the CSI node plugin and the
# cache warmer (`tugboat node`). Build with a Docker engine (or buildah/kaniko):
#   docker build -t harbor.example.com/platform/tugboat:0.1.0 .
# Without any of them, scripts/build-image.sh makes the same filesystem as an OCI archive and
# pushes it with skopeo (README, "The image").
# The node plugin needs to mount: that is granted by the DaemonSet's privileged
# securityContext, not by anything in this image.

ARG RUST_VERSION=1.95

# ---- build: the release binary and the image's filesystem ----------------------------------
# Its build commands are scripts/build-release.sh and scripts/build-image.sh, which
# tests/manifests.rs also runs (into target/image/), so what is shipped here is what the
# manifests are tested with. The Rust image is Debian bookworm: its ca-certificates bundle is
# the one shipped.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ENV OUT=/out
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh "$OUT" && \
    scripts/build-image.sh rootfs "$OUT/tugboat" "$OUT/rootfs"

# ---- runtime: the binary, exactly the libraries it links, a CA bundle, /tmp -----------------
# No shell, no package manager, no base image to pull (distroless-like, without gcr.io). It
# runs as root by default, which the node plugin needs; init containers set runAsUser 65532
# (`nonroot` in /etc/passwd) in their securityContext. No CMD: started without arguments and
# with MODELKIT_REF set it unpacks that ModelKit (KitOps' init-container contract), otherwise
# it prints its usage and exits 2.
FROM scratch AS runtime
COPY --from=build /out/rootfs/ /
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/tugboat"]
