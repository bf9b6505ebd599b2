#!/usr/bin/env bash
# deploy/check-image.sh — checks the image deploy/build-image.sh built, without a registry.
#
#   deploy/check-image.sh [<image>]        (default localhost/canopy-server:<version>)
#
# 1. The staged tree (target/image/): binaries present and executable, `nats-server` a
#    link to canopy-server, static or with its libraries staged, `-v` runs.
# 2. The image's configuration (buildah inspect): entrypoint, cmd, user, PATH, ports, volume.
# 3. The image's files (buildah mount inside `buildah unshare`): same tree as staged.
# 4. Running `-v` in the image (buildah run / podman run): needs an OCI runtime that this
#    machine may not be able to start (user namespaces, cgroups); reported, not fatal.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
image="${1:-localhost/canopy-server:${version}}"
img=target/image
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }

echo "== staged tree ($img)"
for f in usr/local/bin/canopy-server etc/nats/nats-server.conf etc/passwd etc/group; do
    [ -e "$img/rootfs/$f" ] && ok "/$f" || bad "/$f missing"
done
[ -e "$img/rootfs/usr/local/bin/canopy" ] && ok "/usr/local/bin/canopy" \
    || echo "note /usr/local/bin/canopy (the CLI) not staged (--bin-dir without it)"
[ "$(readlink "$img/rootfs/usr/local/bin/nats-server")" = canopy-server ] \
    && ok "/usr/local/bin/nats-server -> canopy-server" || bad "nats-server link"
[ -d "$img/rootfs-writable/data" ] && [ -d "$img/rootfs-writable/var/run/nats" ] \
    && ok "/data, /var/run/nats" || bad "writable dirs"
if file -L "$img/rootfs/usr/local/bin/canopy-server" | grep -q 'statically linked\|static-pie linked'; then
    ok "canopy-server is static"
else
    interp="$(readelf -l "$img/rootfs/usr/local/bin/canopy-server" | sed -n 's/.*interpreter: \(.*\)]/\1/p')"
    [ -e "$img/rootfs$interp" ] && ok "dynamic, loader $interp staged" || bad "loader $interp not staged"
fi
v="$("$img/rootfs/usr/local/bin/nats-server" -v)"
case "$v" in "nats-server: v2."*"canopy v"*) ok "nats-server -v: $(echo "$v" | tr '\n' ' ')";; *) bad "-v: $v";; esac

if ! command -v buildah >/dev/null; then
    echo "buildah not installed: image checks skipped"
    exit "$fail"
fi

echo "== image configuration ($image)"
cfg="$(buildah inspect --type image "$image" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]))')"
check() { # <description> <python expression over c>
    if python3 -c "import json,sys; c=json.loads(sys.argv[1]); sys.exit(0 if ($2) else 1)" "$cfg"; then ok "$1"; else bad "$1: $cfg"; fi
}
check "entrypoint /usr/local/bin/canopy-server" 'c["Entrypoint"] == ["/usr/local/bin/canopy-server"]'
check "cmd --config /etc/nats/nats-server.conf" 'c["Cmd"] == ["--config", "/etc/nats/nats-server.conf"]'
check "user 1000:1000" 'c["User"] == "1000:1000"'
check "PATH=/usr/local/bin" '"PATH=/usr/local/bin" in c["Env"]'
check "ports 4222 6222 7422 8222" 'all(p + "/tcp" in c["ExposedPorts"] for p in ["4222","6222","7422","8222"])'
check "volume /data" '"/data" in c.get("Volumes", {})'

echo "== image files"
# buildah mount works directly as root; otherwise inside `buildah unshare`.
list_files='ctr=$(buildah from "$1") && mnt=$(buildah mount "$ctr") &&
    (cd "$mnt" && find . -path ./proc -prune -o -print | sort && stat -c "%n %u:%g %a" ./data ./var/run/nats ./tmp ./usr/local/bin/canopy-server);
    buildah umount "$ctr" >/dev/null; buildah rm "$ctr" >/dev/null'
if [ "$(id -u)" = 0 ]; then run_list=(sh -c "$list_files" sh "$image"); else run_list=(buildah unshare sh -c "$list_files" sh "$image"); fi
if files="$("${run_list[@]}" 2>&1)"; then
    for f in ./usr/local/bin/canopy-server ./usr/local/bin/nats-server ./etc/nats/nats-server.conf ./etc/ssl/certs/ca-certificates.crt ./etc/passwd; do
        echo "$files" | grep -qx "$f" && ok "$f in image" || bad "$f not in image"
    done
    echo "$files" | grep -qx './data 1000:1000 755' && ok "/data owned by 1000" || bad "/data ownership: $(echo "$files" | grep '^./data ')"
    echo "$files" | grep -qx './var/run/nats 1000:1000 755' && ok "/var/run/nats owned by 1000" || bad "/var/run/nats ownership"
    echo "$files" | grep -qx './tmp 0:0 1777' && ok "/tmp 1777" || bad "/tmp mode: $(echo "$files" | grep '^./tmp ')"
else
    echo "skip image files: buildah mount failed: $(echo "$files" | tail -1)"
fi

echo "== running the image (buildah run --isolation chroot: host network and pids)"
ctr="$(buildah from "$image")"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
if ! out="$(timeout 60 buildah run --isolation chroot "$ctr" -- nats-server -v 2>&1)"; then
    echo "skip: cannot run a container here: $(echo "$out" | tail -1)"
    exit "$fail"
fi
ok "nats-server -v in the image: $(echo "$out" | tr '\n' ' ')"
# The server as the chart's pod runs it, as uid 1000, JetStream on /data; then the chart's
# pre-stop hook in the same container.
port=$((20000 + RANDOM % 10000)); http=$((port + 1))
log="$(mktemp)"
timeout 90 buildah run --isolation chroot "$ctr" -- canopy-server --config /etc/nats/nats-server.conf \
    -p "$port" -m "$http" -js >"$log" 2>&1 &
for _ in $(seq 1 100); do grep -q 'Server is ready' "$log" && break; sleep 0.1; done
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/healthz?js-enabled-only=true" || true)"
[ "$code" = 200 ] && ok "server in the image: /healthz?js-enabled-only=true 200" || bad "healthz $code: $(cat "$log")"
grep -q 'Store Directory: "/data/jetstream"' "$log" && ok "JetStream store on /data (writable by uid 1000)" || bad "store: $(cat "$log")"
if timeout 30 buildah run --isolation chroot "$ctr" -- nats-server -sl=ldm=/var/run/nats/nats.pid; then
    for _ in $(seq 1 300); do grep -q 'Server Exiting' "$log" && break; sleep 0.1; done
    grep -q 'Entering lame duck mode' "$log" && grep -q 'Server Exiting' "$log" \
        && ok "pre-stop nats-server -sl=ldm=/var/run/nats/nats.pid: lame duck, exit" || bad "lame duck: $(cat "$log")"
else
    bad "nats-server -sl=ldm failed"
fi
wait
rm -f "$log"
exit "$fail"
