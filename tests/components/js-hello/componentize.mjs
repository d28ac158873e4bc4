// node componentize.mjs TOOLS_DIR SOURCE.js WIT_DIR OUTPUT.wasm
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

const [tools, source, wit, output] = process.argv.slice(2);
const modules = join(tools, "node_modules", "@bytecodealliance");
const { _setPreopens } = await import(join(modules, "preview2-shim/dist/nodejs/filesystem.js"));
const { componentize } = await import(join(modules, "componentize-js/src/componentize.js"));

// Recent preview2-shim releases preopen nothing by default; componentize-js reads the source
// and the WIT through it.
_setPreopens({ "/": "/" });
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: "wasi:http/proxy",
});
await writeFile(output, component);
