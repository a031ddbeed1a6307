#!/usr/bin/env bash
# Gathers what one service image needs into OUT (laid out as the image's root):
#   OUT/usr/local/bin/SERVICE, a copy named plenum-service (the image's entrypoint),
#   OUT/usr/local/bin/plenum (the CLI, for healthchecks), and OUT/opt/plenum/lib with
#   every shared library the binaries load from outside the base system (libtorch and
#   the CUDA libraries of its wheel), found with ldd.
#
#   deploy/collect.sh OUT BIN_DIR SERVICE [--all-cuda-libs | --no-libs]
#
# --no-libs leaves the libraries out (an image built FROM a base that has them already).
# --all-cuda-libs also copies every library of the torch wheel and its nvidia-* wheels:
# CUDA libraries that libtorch opens only at run time on a GPU (cuDNN's sub-libraries,
# NVRTC) never show in ldd. Without it the image runs on CPU (and on simulated GPUs).
set -euo pipefail
out=$1 bin=$2 service=$3 all=${4:-}
mkdir -p "$out/usr/local/bin" "$out/opt/plenum/lib"
install -m 0755 "$bin/$service" "$out/usr/local/bin/$service"
ln -f "$out/usr/local/bin/$service" "$out/usr/local/bin/plenum-service"
install -m 0755 "$bin/plenum" "$out/usr/local/bin/plenum"
# ldd's output is captured and checked first: piped straight into the filter (whose
# `|| true` allows "no library outside the base system"), a failed ldd or a library it
# reports "not found" would have left an image without it, silently.
linked=$(ldd "$bin/$service" "$bin/plenum") || { echo "ldd failed on $bin/$service: $linked" >&2; exit 1; }
if [[ $all != --no-libs ]] && grep -q "not found" <<<"$linked"; then
    echo "$service links libraries ldd cannot find (LD_LIBRARY_PATH?):" >&2
    grep "not found" <<<"$linked" >&2
    exit 1
fi
libs=$(awk '/=> \// {print $3}' <<<"$linked" | { grep -v -E '^/(usr/)?lib(64)?/' || true; } | sort -u)
[[ $all == --no-libs ]] && libs=""
for lib in $libs; do
    cp -L "$lib" "$out/opt/plenum/lib/"
done
if [[ $all == --all-cuda-libs && -n $libs ]]; then
    torch=$(grep -m1 /libtorch_cpu.so <<<"$libs") || { echo "--all-cuda-libs: $service does not link libtorch_cpu.so" >&2; exit 1; }
    torch_lib=$(dirname "$torch")
    cp -L "$torch_lib"/*.so* "$out/opt/plenum/lib/"
    for dir in "$torch_lib"/../../nvidia/*/lib; do
        [[ -d $dir ]] && cp -L "$dir"/*.so* "$out/opt/plenum/lib/"
    done
fi
echo "collected $service: $(du -sh "$out" | cut -f1)"
