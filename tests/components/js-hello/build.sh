#!/usr/bin/env bash
# Builds the JavaScript component with componentize-js: build.sh OUTPUT.wasm (about 13 MB,
# ~20 s). Installs componentize-js from npm into target/tools the first time. componentize-js
# 0.23 exports wasi:http 0.2.10, so the WIT from the wasmtime-wasi-http crate Gust links is
# relabelled to that version (the interfaces are the same; Wasmtime accepts any 0.2.x).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$(realpath -m "${1:?usage: build.sh OUTPUT.wasm}")"

tools="$root/target/tools/componentize-js"
if [ ! -d "$tools/node_modules/@bytecodealliance/componentize-js" ]; then
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --silent \
        @bytecodealliance/componentize-js@0.23.0 @bytecodealliance/preview2-shim@0.26.1
fi
wit_src="${WIT_DIR:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.0.8/wit | head -n1)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$wit_src" "$work/wit"
sed -i -E 's/@0\.2\.[0-9]+/@0.2.10/g; s/version = 0\.2\.(1[1-9])/version = 0.2.10/g' \
    "$work"/wit/*.wit "$work"/wit/deps/*.wit

cd "$here"
node componentize.mjs "$tools" app.js "$work/wit" "$out"
