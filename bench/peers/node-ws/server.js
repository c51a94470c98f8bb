// A single-threaded Node `ws` + ioredis fan-out server: the simplest peer of notify-gateway,
// speaking the same wire contract (GET /?region=XX upgraded to a WebSocket; every message
// PUBLISHed on tvs:XX forwarded as is to the clients of XX). notify-bench measures it exactly
// like the gateway (`--gateway http://127.0.0.1:PORT --gateway-pid PID`); see
// docs/BENCHMARKS.md, "Against a single-threaded Node ws server".
//
//   npm install --prefix bench/peers/node-ws
//   PORT=8799 REDIS_URL=redis://127.0.0.1:6379 node bench/peers/node-ws/server.js
"use strict";

const http = require("node:http");
const { WebSocketServer } = require("ws");
const Redis = require("ioredis");

const port = Number(process.env.PORT || 8799);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const regionPattern = /^[A-Z]{2}$/;

/** region → Set of open sockets */
const clients = new Map();
let subscribed = false;

const server = http.createServer((request, response) => {
  if (request.url === "/readyz" || request.url === "/healthz") {
    response.writeHead(subscribed ? 200 : 503).end(subscribed ? "ok\n" : "not subscribed\n");
    return;
  }
  response.writeHead(404).end();
});

const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false });
wss.on("connection", (socket, request) => {
  const region = new URL(request.url, "http://localhost").searchParams.get("region");
  if (!region || !regionPattern.test(region)) {
    socket.close(1008, "bad region");
    return;
  }
  let members = clients.get(region);
  if (!members) {
    members = new Set();
    clients.set(region, members);
  }
  members.add(socket);
  socket.on("close", () => members.delete(socket));
  socket.on("error", () => members.delete(socket));
});

const subscriber = new Redis(redisUrl);
subscriber.psubscribe("tvs:*").then(() => {
  subscribed = true;
});
subscriber.on("pmessageBuffer", (_pattern, channel, message) => {
  const members = clients.get(channel.toString().slice(4));
  if (!members) return;
  for (const socket of members) socket.send(message, { binary: false });
});

server.listen(port, "127.0.0.1", () => {
  console.log(`node ws peer on 127.0.0.1:${port}, redis ${redisUrl}, pid ${process.pid}`);
});
