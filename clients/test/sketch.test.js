import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { inlinable } from "../lib/sketch.js";

test("a script that would end its element early, or never, is not written inline", () => {
  assert.equal(inlinable('const s = "</script>";'), false);
  assert.equal(inlinable("x = '</SCRIPT '"), false);
  assert.equal(inlinable("// <!-- then <script> opens double-escaped script data"), false);
  assert.equal(inlinable("// <!-- alone is harmless"), true);
  assert.equal(inlinable("if (a < b) c = '<scripted>';"), true);
});

test("the libraries a sketch's frame loads are written inline, so frames share one download", () => {
  for (const file of ["acorn/dist/acorn.js", "p5/lib/p5.min.js", "p5-2/lib/p5.min.js"]) {
    assert.ok(inlinable(readFileSync(new URL(`../node_modules/${file}`, import.meta.url), "utf8")), file);
  }
});
