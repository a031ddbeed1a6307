#!/usr/bin/env bash
# Builds the service images with no registry: a Debian 12 base made here with
# debootstrap (from the Debian mirror, the host's own release, so the host-built
# binaries find the glibc they were linked against) and `docker import`, a layer with
# the libtorch libraries the model services load, then one image per service through
# deploy/Dockerfile (target `prebuilt`) with the host's release binaries.
#
#   deploy/build-offline.sh            # needs target/release binaries (make build)
#   deploy/build-offline.sh --build    # builds them first
#
# Images: plenum/debian:bookworm, plenum/torch-libs:latest, plenum/{broker,detector,ocr,gateway}:latest
# Needs: docker, debootstrap (apt-get install debootstrap), root (debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
WORK="${WORK:-target/deploy}"
SERVICES=(plenum-broker plenum-detector plenum-ocr plenum-gateway)
started=$(date +%s)

if [[ ${1:-} == --build ]]; then
    cargo build --release --bin plenum --bins -p plenum-broker -p plenum-detector -p plenum-ocr -p plenum-gateway
fi
for bin in "${SERVICES[@]}" plenum; do
    [[ -x $BIN/$bin ]] || { echo "$BIN/$bin is not built (make build, or --build)" >&2; exit 2; }
done
# The classic builder: it needs no buildx, and builds only up to --target.
export DOCKER_BUILDKIT=0
mkdir -p "$WORK"

# 1. The base: a minimal Debian of the host's release, imported as an image.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
if ! docker image inspect "plenum/debian:$codename" >/dev/null 2>&1; then
    if [[ ! -x $WORK/rootfs/bin/sh ]]; then
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase "$codename" "$WORK/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    fi
    rm -rf "$WORK/rootfs/var/cache/apt/archives"/*.deb "$WORK/rootfs/var/lib/apt/lists"/*
    tar -C "$WORK/rootfs" -c . | docker import - "plenum/debian:$codename"
fi

# 2. The libraries the model services load (libtorch and the CUDA libraries of its
#    wheel, as ldd finds them), once, in a layer both model images share.
if ! docker image inspect plenum/torch-libs:latest >/dev/null 2>&1; then
    ctx="$WORK/ctx-torch-libs"
    rm -rf "$ctx"
    deploy/collect.sh "$ctx/out" "$BIN" plenum-detector >/dev/null
    deploy/collect.sh "$ctx/out" "$BIN" plenum-ocr
    rm -rf "$ctx/out/usr"
    printf 'FROM plenum/debian:%s\nCOPY out/ /\n' "$codename" >"$ctx/Dockerfile"
    docker build -q -t plenum/torch-libs:latest "$ctx"
    rm -rf "$ctx"
fi

# 3. One image per service through deploy/Dockerfile, binaries handed in as the context.
for service in "${SERVICES[@]}"; do
    ctx="$WORK/ctx-$service"
    rm -rf "$ctx"
    base="plenum/debian:$codename"
    case $service in plenum-detector | plenum-ocr) base=plenum/torch-libs:latest ;; esac
    deploy/collect.sh "$ctx/out" "$BIN" "$service" --no-libs
    docker build -q -f deploy/Dockerfile --target prebuilt \
        --build-arg SERVICE="$service" \
        --build-arg BASE_IMAGE="$base" \
        -t "plenum/${service#plenum-}:latest" "$ctx"
    rm -rf "$ctx"
done
docker image ls 'plenum/*'
echo "images built in $(( $(date +%s) - started ))s"
