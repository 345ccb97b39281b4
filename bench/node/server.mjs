// The baseline of bench/fanout.py: a minimal Socket.IO 4 server that broadcasts what it is sent.
//   node server.mjs PORT   (prints "listening PORT")
import { Server } from "socket.io";

const io = new Server(Number(process.argv[2] ?? 0), { transports: ["websocket"], serveClient: false });
io.on("connection", (socket) => {
  socket.on("trigger", (payload) => io.emit("state", payload));
});
io.httpServer.on("listening", () => console.log(`listening ${io.httpServer.address().port}`));
