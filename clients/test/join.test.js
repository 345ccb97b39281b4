// How a page explains a refused join, and whether it tries again by itself.
import assert from "node:assert/strict";
import test from "node:test";

globalThis.location = { pathname: "/perform", search: "?part=nope&token=t" };
const { explain } = await import("../lib/join.js");

test("every refusal a page can meet is explained, and retried where waiting helps", () => {
  const [limited, limitedRetry] = explain({ code: "rate_limited", message: "too many failed joins" }, {});
  assert.match(limited.title, /Too many tries/);
  assert.equal(limitedRetry, 31); // the conductor bars an address for 30 s
  const [busy, busyRetry] = explain({ code: "overloaded", message: "running late" }, { role: "audience" });
  assert.match(busy.title, /busy/);
  assert.ok(busyRetry >= 30 && busyRetry <= 60);
  const [part, partRetry] = explain({ code: "unknown_part", message: "a performer needs one of the parts: a, b" }, { part: "nope" });
  assert.match(part.title, /no part “nope”/);
  assert.equal(partRetry, null);
  assert.deepEqual(part.links, [["Choose your part", "/perform?token=t"]]); // the token is kept
  assert.equal(explain({ code: "internal", message: "x" }, {})[1], 5);
  const [other, otherRetry] = explain({ code: "bad_auth", message: "role: must be one of …" }, {});
  assert.match(other.action, /reload/);
  assert.equal(otherRetry, null);
});
