#!/usr/bin/env bash
# The tugboat image without a Docker engine: the release binary, exactly the shared libraries it
# links (as ldd lists them, with the dynamic loader), a CA bundle, /tmp, and a distroless-like
# /etc/passwd with root and nonroot (65532). Reproducible: every entry owned by uid/gid 0, fixed
# modes and mtimes (SOURCE_DATE_EPOCH, default 0), names sorted, gzip -n; the same binary gives
# the same digests on any machine.
#
#   scripts/build-image.sh rootfs  BINARY DIR              the image's filesystem, in DIR
#   scripts/build-image.sh archive BINARY FILE.tar [TAG]   an OCI image archive (oci-archive)
#   scripts/build-image.sh push    BINARY REGISTRY/REPO:TAG
#       the archive, copied to the registry with skopeo (extra skopeo flags: SKOPEO_FLAGS,
#       e.g. "--dest-tls-verify=false" for a plain-HTTP registry)
#
# The Dockerfile's build stage runs `rootfs` and its image stage is `FROM scratch` plus that
# directory, so both ways give the same filesystem. Needs: bash, GNU tar, gzip, sha256sum, ldd.
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt, Debian's ca-certificates) is the CA
# bundle shipped; tugboat also trusts --ca-file.
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" >&2
    exit 2
}

epoch="${SOURCE_DATE_EPOCH:-0}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

die() {
    echo "build-image: $*" >&2
    exit 1
}

# rootfs BINARY DIR
make_rootfs() {
    local binary="$1" root="$2"
    [ -x "$binary" ] || die "$binary is not an executable"
    [ -s "$ca_bundle" ] || die "no CA bundle at $ca_bundle (apt-get install ca-certificates, or set CA_BUNDLE)"
    [ ! -e "$root" ] || [ -z "$(ls -A "$root")" ] || die "$root exists and is not empty"
    mkdir -p "$root"
    install -D -m 0755 "$binary" "$root/usr/local/bin/tugboat"
    # Every library ldd resolves, at the path the loader looks for it, plus the loader itself.
    local libs
    libs="$(ldd "$binary" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $2 == "=>" { print "MISSING " $1; next }
        $1 ~ /^\// { print $1 }')"
    if grep -q '^MISSING' <<<"$libs"; then
        die "ldd cannot resolve: $(grep '^MISSING' <<<"$libs" | tr '\n' ' ')"
    fi
    local lib
    while read -r lib; do
        [ -n "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        chmod 0755 "$root$lib"
    done <<<"$libs"
    install -D -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
    mkdir -p "$root/etc"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$root/etc/group"
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    mkdir -p "$root/tmp"
    # Normalise what the host's umask and cp did: dirs 0755, /tmp 1777.
    find "$root" -type d -exec chmod 0755 {} +
    chmod 1777 "$root/tmp"
}

# Deterministic tar of the entries of DIR on stdout.
det_tar() {
    local dir="$1"
    local -a entries
    mapfile -t entries < <(cd "$dir" && LC_ALL=C ls -A | LC_ALL=C sort)
    LC_ALL=C tar --create --format=gnu --sort=name --mtime="@$epoch" --owner=0 --group=0 \
        --numeric-owner --no-acls --no-xattrs --no-selinux -C "$dir" -- "${entries[@]}"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# store_blob FILE LAYOUT: moves FILE into LAYOUT/blobs/sha256/ under its digest; prints
# "HEX SIZE".
store_blob() {
    local hex size
    hex="$(sha "$1")"
    size="$(stat -c %s "$1")"
    mv "$1" "$2/blobs/sha256/$hex"
    echo "$hex $size"
}

# archive BINARY FILE [TAG]
make_archive() {
    local binary="$1" out="$2" tag="${3:-latest}"
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    make_rootfs "$binary" "$work/rootfs"
    local layout="$work/layout"
    mkdir -p "$layout/blobs/sha256"

    det_tar "$work/rootfs" >"$work/layer.tar"
    local diff_id
    diff_id="$(sha "$work/layer.tar")"
    gzip -n -c "$work/layer.tar" >"$work/layer.tar.gz"
    local layer layer_size
    read -r layer layer_size < <(store_blob "$work/layer.tar.gz" "$layout")

    local created
    created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
    local arch
    case "$(uname -m)" in
        x86_64) arch=amd64 ;;
        aarch64) arch=arm64 ;;
        *) arch="$(uname -m)" ;;
    esac
    printf '{"architecture":"%s","os":"linux","created":"%s","config":{"User":"0","Env":["PATH=/usr/local/bin"],"Entrypoint":["/usr/local/bin/tugboat"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"scripts/build-image.sh"}]}' \
        "$arch" "$created" "$diff_id" "$created" >"$work/config.json"
    local config config_size
    read -r config config_size < <(store_blob "$work/config.json" "$layout")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
    local manifest manifest_size
    read -r manifest manifest_size < <(store_blob "$work/manifest.json" "$layout")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$manifest_size" "$tag" >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    find "$layout" -type f -exec chmod 0644 {} +
    find "$layout" -type d -exec chmod 0755 {} +

    mkdir -p "$(dirname "$out")"
    det_tar "$layout" >"$out.partial"
    mv "$out.partial" "$out"
    echo "image: $out"
    echo "manifest: sha256:$manifest"
    echo "config: sha256:$config"
    echo "layer: sha256:$layer ($layer_size bytes, diff_id sha256:$diff_id)"
}

[ $# -ge 1 ] || usage
command="$1"
shift
case "$command" in
    rootfs)
        [ $# -eq 2 ] || usage
        make_rootfs "$1" "$2"
        ;;
    archive)
        [ $# -ge 2 ] && [ $# -le 3 ] || usage
        make_archive "$@"
        ;;
    push)
        [ $# -eq 2 ] || usage
        command -v skopeo >/dev/null || die "push needs skopeo (apt-get install skopeo)"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        make_archive "$1" "$work/tugboat.tar" "${2##*:}"
        # shellcheck disable=SC2086
        skopeo copy ${SKOPEO_FLAGS:-} "oci-archive:$work/tugboat.tar" "docker://$2"
        ;;
    *) usage ;;
esac
