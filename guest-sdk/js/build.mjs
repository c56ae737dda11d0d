// Run by `sluice build` in a JavaScript transform project (cwd = the
// project): node .sluice/build.mjs <componentize-js dir> <entry> <wit dir> <out>
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [tool, entry, wit, out] = process.argv.slice(2);
const { componentize } = await import(pathToFileURL(join(tool, "src", "componentize.js")).href);
const { component } = await componentize({
  sourcePath: entry,
  witPath: wit,
  worldName: "transform",
  // No WASI at all: console, Math.random, Date.now and fetch are not
  // linked, so the component imports nothing but the host interface.
  disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
});
await writeFile(out, component);
