#!/usr/bin/env bash
# Prints the path of a wasmtime CLI at the version Gust links (48.0.8), building it into
# target/tools the first time (a long build: about 20 minutes on 2 cores). The wasm benchmark
# compares Gust with `wasmtime serve` from this binary.
set -euo pipefail
cd "$(dirname "$0")/.."

version=48.0.8
root="target/tools/wasmtime-$version"
if [ ! -x "$root/bin/wasmtime" ]; then
    echo "building wasmtime-cli $version into $root (once)" >&2
    cargo install wasmtime-cli --version "=$version" --locked --root "$root" \
        >&2
fi
echo "$PWD/$root/bin/wasmtime"
