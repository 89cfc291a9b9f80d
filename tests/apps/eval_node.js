// The single-threaded event-loop tier of the linking evaluation (tests/src/eval.rs): Node's
// standard library only.
//
//     node eval_node.js ASYNC_PORT THREADED_PORT
//
// Serves GET /r/<id>: calls GET /a/<id> on the Rust async service, then (after it answered)
// GET /t/<id> on the Python service, both through one keep-alive http.Agent, and answers 200.
// Every request in flight shares the one thread, and the agent hands whichever idle socket it
// has to whichever request asks next, so neither the thread nor the connection tells which
// incoming request an outgoing call belongs to. Binds an ephemeral port on 127.0.0.1 and prints
// "PORT <n>" once listening. Nothing here knows about tracing.
"use strict";

const http = require("node:http");

const asyncPort = Number(process.argv[2]);
const threadedPort = Number(process.argv[3]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function get(port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        if (res.statusCode === 200) resolve(Buffer.concat(chunks));
        else reject(new Error(`GET ${path} on ${port}: ${res.statusCode}`));
      });
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

function reply(res, status, body) {
  res.writeHead(status, {
    "Content-Type": "text/plain",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer(async (req, res) => {
  const m = /^\/r\/([^/]+)$/.exec(req.url);
  if (req.method !== "GET" || !m) {
    reply(res, 404, "no such path\n");
    return;
  }
  const id = m[1];
  try {
    await get(asyncPort, `/a/${id}`);
    await get(threadedPort, `/t/${id}`);
    reply(res, 200, `ok ${id}\n`);
  } catch (e) {
    reply(res, 502, `${e.message}\n`);
  }
});
// nginx keeps idle upstream connections for a minute: never close one under it.
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
