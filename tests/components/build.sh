#!/usr/bin/env bash
# Rebuilds the test components from source. Needs Debian's clang, lld, wasi-libc and
# libclang-rt-dev-wasm32, wit-bindgen (cargo install wit-bindgen-cli --version 0.46.0) and jco
# (npm install @bytecodealliance/jco@1, for `jco new` with the WASI preview1 adapter).
# The WIT is the wasi:http one that ships inside the wasmtime-wasi-http crate Gust links.
set -euo pipefail
cd "$(dirname "$0")"

wit_dir="${WIT_DIR:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.0.8/wit | head -n1)}"
jco="${JCO:-jco}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for component in probe; do
    wit-bindgen c "$wit_dir" --world wasmtime:wasi-http/bindings --all-features --out-dir "$work/$component"
    clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor \
        -I "$work/$component" \
        "$component/$component.c" "$work/$component/bindings.c" "$work/$component/bindings_component_type.o" \
        -o "$work/$component.core.wasm"
    "$jco" new "$work/$component.core.wasm" --wasi-reactor -o "$component.wasm"
    echo "built $component.wasm ($(stat -c %s "$component.wasm") bytes)"
done

# Without a C library: only the wasi:http/proxy bindings, so no preview1 adapter is needed
# (what wasi-sdk's wasm32-wasip2 target gives C programs, which Debian's wasi-libc lacks).
wit-bindgen c "$wit_dir" --world wasi:http/proxy --all-features --out-dir "$work/hello"
clang --target=wasm32-wasi -O2 -nostdlib -Wl,--no-entry \
    -I "$work/hello" \
    hello/hello.c "$work/hello/proxy.c" "$work/hello/proxy_component_type.o" \
    -o "$work/hello.core.wasm"
"$jco" new "$work/hello.core.wasm" -o hello.wasm
echo "built hello.wasm ($(stat -c %s hello.wasm) bytes)"

# Without wit-bindgen: a component with no wasi:http export.
clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor not-http/not-http.c -o "$work/not-http.core.wasm"
"$jco" new "$work/not-http.core.wasm" --wasi-reactor -o not-http.wasm
echo "built not-http.wasm ($(stat -c %s not-http.wasm) bytes)"
