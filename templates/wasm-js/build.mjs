// Builds app.wasm from app.js with componentize-js. componentize-js 0.23 exports wasi:http
// 0.2.10, so the WIT in wit/ is relabelled to that version in a scratch copy, its feature
// gates too (the interfaces are the same, and Gust's wasmtime accepts any 0.2.x).
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { _setPreopens } from "@bytecodealliance/preview2-shim/filesystem";
import { componentize } from "@bytecodealliance/componentize-js";

const scratch = await mkdtemp(join(tmpdir(), "wit-"));
try {
  await cp("wit", scratch, { recursive: true });
  for (const dir of [scratch, join(scratch, "deps")]) {
    for (const file of await readdir(dir)) {
      if (!file.endsWith(".wit")) continue;
      const text = await readFile(join(dir, file), "utf8");
      const relabelled = text
        .replace(/@0\.2\.\d+/g, "@0.2.10")
        .replace(/version = 0\.2\.(1[1-9])/g, "version = 0.2.10");
      await writeFile(join(dir, file), relabelled);
    }
  }
  // preview2-shim preopens nothing by default; componentize-js reads through it.
  _setPreopens({ "/": "/" });
  const { component } = await componentize({
    sourcePath: resolve("app.js"),
    witPath: scratch,
    worldName: "wasi:http/proxy",
  });
  await writeFile("app.wasm", component);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
