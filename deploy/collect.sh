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
libs=$(ldd "$bin/$service" "$bin/plenum" | awk '/=> \// {print $3}' | grep -v -E '^/(usr/)?lib(64)?/' | sort -u || true)
[[ $all == --no-libs ]] && libs=""
for lib in $libs; do
    cp -L "$lib" "$out/opt/plenum/lib/"
done
if [[ $all == --all-cuda-libs && -n $libs ]]; then
    torch_lib=$(dirname "$(grep -m1 /libtorch_cpu.so <<<"$libs")")
    cp -L "$torch_lib"/*.so* "$out/opt/plenum/lib/"
    for dir in "$torch_lib"/../../nvidia/*/lib; do
        [[ -d $dir ]] && cp -L "$dir"/*.so* "$out/opt/plenum/lib/"
    done
fi
echo "collected $service: $(du -sh "$out" | cut -f1)"
