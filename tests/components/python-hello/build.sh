#!/usr/bin/env bash
# Builds the Python component with componentize-py: build.sh OUTPUT.wasm (about 18 MB, ~15 s).
# componentize-py comes from ./scripts/setup.sh (a virtualenv under target/tools), or set
# COMPONENTIZE_PY. The WIT is the wasi:http one inside the wasmtime-wasi-http crate Gust links.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$(realpath -m "${1:?usage: build.sh OUTPUT.wasm}")"

componentize_py="${COMPONENTIZE_PY:-$root/target/tools/componentize-py/bin/componentize-py}"
if [ ! -x "$componentize_py" ]; then
    echo "componentize-py not found at $componentize_py: run ./scripts/setup.sh" >&2
    exit 1
fi
wit_dir="${WIT_DIR:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.0.8/wit | head -n1)}"

cd "$here"
"$componentize_py" --quiet -d "$wit_dir" -w wasi:http/proxy componentize app -o "$out"
