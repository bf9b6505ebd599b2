#!/usr/bin/env bash
# deploy/build-image.sh — builds the Canopy server image with Debian's buildah (or podman).
#
#   deploy/build-image.sh [--stage-only] [--tag <name:tag>] [--bin-dir <dir>]
#
# 1. Compiles canopy-server and canopy in release mode, static for
#    x86_64-unknown-linux-musl when that target is installed (`rustup target add
#    x86_64-unknown-linux-musl`, plus Debian's musl-tools for ring's C parts); otherwise
#    for the host (glibc), and then the binary's shared libraries go into the image too.
# 2. Stages the image's file tree in target/image/ (rootfs/ and rootfs-writable/, see
#    deploy/Containerfile for the layout).
# 3. Builds deploy/Containerfile from `scratch` with target/image/ as the context: nothing
#    is pulled from a registry. Default tag: localhost/canopy-server:<workspace version>.
#
# --stage-only stops after step 2 (no buildah/podman needed); deploy/check-image.sh checks
# the staged tree and, when an image tool is present, the built image.
# --bin-dir skips step 1 and takes canopy-server (and canopy, when there) from <dir>, e.g.
# the bin/ of `cargo install --target x86_64-unknown-linux-musl --root <root> --path …`.
# Binaries are stripped when staged (the release profile keeps line tables).
# Environment: TARGET (Rust target triple), CARGO (cargo binary), BUILDER (buildah|podman).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

stage_only=0
tag=""
bin_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --stage-only) stage_only=1 ;;
        --tag) tag="$2"; shift ;;
        --bin-dir) bin_dir="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
tag="${tag:-localhost/canopy-server:${version}}"
cargo="${CARGO:-cargo}"

if [ -n "$bin_dir" ]; then
    bin="$bin_dir"
    TARGET="prebuilt ($bin_dir)"
else
    if [ -z "${TARGET:-}" ]; then
        if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
            TARGET=x86_64-unknown-linux-musl
        else
            TARGET="$(rustc -vV | sed -n 's/^host: //p')"
            echo "note: x86_64-unknown-linux-musl is not installed; building for $TARGET (dynamic)" >&2
        fi
    fi
    "$cargo" build --release --locked --target "$TARGET" -p canopy-server -p canopy-cli
    bin="target/$TARGET/release"
fi

img="target/image"
rm -rf "$img"
mkdir -p "$img/rootfs/usr/local/bin" "$img/rootfs/etc/nats" "$img/rootfs/etc/ssl/certs" \
    "$img/rootfs/tmp" "$img/rootfs-writable/data" "$img/rootfs-writable/var/run/nats"
chmod 1777 "$img/rootfs/tmp"
install -s -m 0755 "$bin/canopy-server" "$img/rootfs/usr/local/bin/"
if [ -x "$bin/canopy" ]; then
    install -s -m 0755 "$bin/canopy" "$img/rootfs/usr/local/bin/"
else
    echo "warning: no $bin/canopy: the image has no canopy CLI" >&2
fi
ln -s canopy-server "$img/rootfs/usr/local/bin/nats-server"
install -m 0644 deploy/nats-server.conf "$img/rootfs/etc/nats/nats-server.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\nnats:x:1000:1000:nats:/data:/sbin/nologin\n' \
    > "$img/rootfs/etc/passwd"
printf 'root:x:0:\nnats:x:1000:\n' > "$img/rootfs/etc/group"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$img/rootfs/etc/ssl/certs/"
else
    echo "warning: /etc/ssl/certs/ca-certificates.crt missing: the image has no CA roots" >&2
fi

# A dynamic binary brings its loader and libraries (as ldd resolves them on this host);
# ldd names no paths for a static one.
for b in canopy-server canopy; do
    f="$img/rootfs/usr/local/bin/$b"
    [ -e "$f" ] || continue
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
        mkdir -p "$img/rootfs$(dirname "$lib")"
        cp -L "$lib" "$img/rootfs$lib"
    done
done
cp deploy/Containerfile "$img/Containerfile"
echo "staged $img (binaries for $TARGET)"

[ "$stage_only" = 1 ] && exit 0

builder="${BUILDER:-}"
if [ -z "$builder" ]; then
    if command -v buildah >/dev/null; then builder=buildah
    elif command -v podman >/dev/null; then builder=podman
    else
        echo "error: neither buildah nor podman found (apt-get install buildah)" >&2
        exit 1
    fi
fi
case "$builder" in
    buildah) buildah bud --layers=false -f "$img/Containerfile" -t "$tag" "$img" ;;
    podman) podman build -f "$img/Containerfile" -t "$tag" "$img" ;;
    *) echo "error: BUILDER must be buildah or podman" >&2; exit 2 ;;
esac
echo "built $tag"
