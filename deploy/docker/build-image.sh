#!/usr/bin/env bash
# Build the haseqd container image FROM scratch, with no registry: the image holds the release
# binary, exactly the shared libraries `ldd` names for it (plus the dynamic loader), a passwd
# entry for the unprivileged user and an empty state directory. Nothing is pulled.
#
#   deploy/docker/build-image.sh                        # cargo build --release, then the image
#   deploy/docker/build-image.sh --binary PATH          # use a binary already built
#   deploy/docker/build-image.sh --tag haseqd:dev       # another tag (default haseqd:local)
#   deploy/docker/build-image.sh --keep-context DIR     # keep the assembled context in DIR
#
# The binary is glibc-dynamic; its libraries are taken from this machine, so build the image on
# a machine of the same distribution (and architecture) as the one that built the binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tag="haseqd:local"
binary=""
keep=""
# The user the node runs as inside the container; matches the Dockerfile's USER/--chown.
uid=10001
gid=10001

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
        --keep-context) keep="${2:?--keep-context needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '[build-image] %s\n' "$*"; }

if [ -z "$binary" ]; then
    say "cargo build --release --bin haseqd"
    (cd "$repo" && cargo build --release --bin haseqd)
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/haseqd"
fi
if [ ! -x "$binary" ]; then
    echo "build-image.sh: $binary is not an executable file" >&2
    exit 1
fi

if [ -n "$keep" ]; then
    ctx="$keep"
    rm -rf "$ctx"
    mkdir -p "$ctx"
else
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/haseqd-image.XXXXXX")"
    trap 'rm -rf "$ctx"' EXIT
fi
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$ctx/state"
chmod 0700 "$ctx/state"    # /var/lib/haseq: the node's identity, for its user only

say "binary: $binary"
install -m 0755 "$binary" "$root/usr/local/bin/haseqd"

# Copy each library to the path ldd resolved it to (following symlinks, so the image gets the
# file itself under the name the loader looks for). linux-vdso has no file: the kernel maps it.
copy_lib() {
    local path="$1"
    [ -e "$path" ] || { echo "build-image.sh: ldd names $path, which does not exist" >&2; exit 1; }
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
    chmod 0755 "$root$path"
    say "  lib: $path"
}

if ! ldd_out="$(ldd "$binary" 2>&1)"; then
    if printf '%s' "$ldd_out" | grep -q 'not a dynamic executable'; then
        say "static binary: no libraries to copy"
        ldd_out=""
    else
        echo "build-image.sh: ldd $binary failed: $ldd_out" >&2
        exit 1
    fi
fi
if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
    echo "build-image.sh: unresolved libraries:" >&2
    printf '%s\n' "$ldd_out" | grep 'not found' >&2
    exit 1
fi
say "libraries (ldd):"
while read -r line; do
    case "$line" in
        *"=> /"*)                  # libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
            path="${line#*=> }"; copy_lib "${path%% (*}" ;;
        /*)                        # /lib64/ld-linux-x86-64.so.2 (0x...): the loader
            copy_lib "${line%% (*}" ;;
        "") ;;
        *) ;;                      # linux-vdso.so.1 (0x...): no file
    esac
done <<<"$ldd_out"

# The loader named in the binary (PT_INTERP) must be in the image, whatever ldd printed.
interp="$(readelf -l "$binary" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
if [ -n "$interp" ] && [ ! -e "$root$interp" ]; then
    copy_lib "$interp"
fi

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
haseq:x:$uid:$gid:haseq sequencer:/var/lib/haseq:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
haseq:x:$gid:
EOF
# Peers are named by DNS (compose service names): /etc/hosts first, then the resolver Docker
# mounts at /etc/resolv.conf. glibc >= 2.34 has the files and dns backends built in.
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

cp "$here/Dockerfile" "$ctx/Dockerfile"

say "context: $ctx"
(cd "$ctx" && find rootfs state -mindepth 1 | sort | sed 's/^/[build-image]   /')

# Docker's CLI builds with BuildKit only through the buildx plugin; without it, ask for the
# classic builder explicitly instead of failing. Either builds FROM scratch without a pull.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
say "docker build -t $tag (FROM scratch)"
docker build -t "$tag" "$ctx"

# Smoke test: the binary starts in the image (loader, libraries and all).
say "smoke test: docker run --rm --network none $tag --version"
docker run --rm --network none "$tag" --version
say "built $tag"
