// The client of bench/commands.py: one conductor-role socket.io client (socket.io-client 4, from
// npm) sending parameter changes back to back, WINDOW in flight, each acknowledged once on disk.
//   node commands.mjs URL TOKEN COMMANDS WINDOW
// Prints one JSON line: {"commands", "seconds", "refused"}.
import { io } from "socket.io-client";

const [url, token, commands, window] = process.argv.slice(2).map((v, i) => (i < 2 ? v : Number(v)));
const socket = io(url, { transports: ["websocket"], reconnection: false, auth: { role: "conductor", token } });
await new Promise((resolve, reject) => {
  socket.once("welcome", resolve);
  socket.once("connect_error", reject);
});

let sent = 0;
let answered = 0;
let refused = 0;
const start = performance.now();
await new Promise((resolve) => {
  const send = () => {
    const i = sent++;
    socket.timeout(10000).emit("command", { cmd: "param", name: "density", value: (i % 100) / 100 }, (err, answer) => {
      if (err || !answer?.ok) refused++;
      if (++answered === commands) resolve();
      else if (sent < commands) send();
    });
  };
  for (let i = 0; i < Math.min(window, commands); i++) send();
});
const seconds = (performance.now() - start) / 1000;
socket.close();
process.stdout.write(`${JSON.stringify({ commands, seconds, refused })}\n`, () => process.exit(0));
