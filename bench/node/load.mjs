// The load process of bench/fanout.py: N Socket.IO clients, and the time from a change to its
// receipt by the last of them.
//   node load.mjs URL N ROUNDS tutti|plain [TOKEN] [BYTES]
// tutti: the clients join a conductor as audience, and a conductor-role socket sends tempo changes.
// plain: a socket sends a payload of BYTES bytes to a server that broadcasts it to everyone.
// Prints "ready", then one JSON line: {"joined", "rounds": [ms to the last client, ...], "bytes"}.
import { io } from "socket.io-client";

const [url, n, rounds, mode, token = "", size = "300"] = process.argv.slice(2);
const clients = Number(n);
const options = (auth) => ({ transports: ["websocket"], forceNew: true, reconnection: false, auth });

const connect = (auth) =>
  new Promise((resolve, reject) => {
    const socket = io(url, options(auth));
    socket.once(mode === "tutti" ? "welcome" : "connect", () => resolve(socket));
    socket.once("connect_error", reject);
    socket.once("error", (e) => reject(new Error(`${e.code}: ${e.message}`))); // refused by Tutti
  });

const sockets = [];
for (let i = 0; i < clients; i += 50) {
  const batch = Math.min(50, clients - i);
  sockets.push(...(await Promise.all(Array.from({ length: batch }, () => connect({ role: "audience" })))));
}
const trigger = await connect({ role: "conductor", token });
console.log("ready");

let received = 0;
let last = 0;
let bytes = 0;
let done = () => {};
for (const socket of sockets) {
  socket.on("state", (message) => {
    received++;
    if (received === clients) {
      last = performance.now();
      bytes = JSON.stringify(message).length;
      done();
    }
  });
}

const results = [];
const payload = { change: { pad: "x".repeat(Math.max(0, Number(size) - 40)) }, state: { seq: 0 } };
for (let round = 0; round < Number(rounds); round++) {
  received = 0;
  const all = new Promise((resolve) => (done = resolve));
  const sent = performance.now();
  if (mode === "tutti") trigger.emit("command", { cmd: "tempo", bpm: 90 + (round % 2) });
  else trigger.emit("trigger", payload);
  await Promise.race([all, new Promise((r) => setTimeout(r, 10000))]);
  results.push(received === clients ? last - sent : null);
  await new Promise((r) => setTimeout(r, 100));
}
for (const socket of [...sockets, trigger]) socket.close();
// Exit once the line is out: a pipe takes it in pieces, and exiting at once would cut it short.
process.stdout.write(`${JSON.stringify({ joined: sockets.length, rounds: results, bytes })}\n`, () => process.exit(0));
