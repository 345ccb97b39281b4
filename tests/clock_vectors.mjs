// Reads {"options": {...}, "exchanges": [[t0,t1,t2,t3], ...]} on stdin and prints, after each
// exchange, [accepted, estimate, error, rtt, offsetAt(t3)]: compared with the Python estimator.
import { OffsetEstimator } from "../clients/lib/clocksync.js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { options, exchanges } = JSON.parse(input);
const est = new OffsetEstimator({ ...options, local: () => 0 });
const out = exchanges.map(([t0, t1, t2, t3]) => {
  const ok = est.add(t0, t1, t2, t3);
  return [ok, est.estimate, est.error, est.rtt, est.offsetAt(t3 + 0.5)];
});
process.stdout.write(JSON.stringify(out));
