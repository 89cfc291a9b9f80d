// The event-loop server on host B of the cross-host evaluation (tests/src/xeval.rs): Node's
// standard library only. Nothing here knows about tracing.
//
//     BIND=ADDR CALLBACK=HOST:PORT node xhost_node.js
//
// Serves GET /n/<id> and GET /x/<id> (answered on a later turn of the loop, so requests
// interleave), and GET /c/<id>: first calls GET /cb/<id> on CALLBACK (host A) through one
// keep-alive http.Agent, then answers. Every answer is 200 "ok <id>". Binds an ephemeral port
// and prints "PORT <n>" once listening.
"use strict";

const http = require("node:http");

const [cbHost, cbPort] = (process.env.CALLBACK || "127.0.0.1:1").split(":");
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

function get(path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: cbHost, port: Number(cbPort), path, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        if (res.statusCode === 200) resolve(Buffer.concat(chunks));
        else reject(new Error(`GET ${path}: ${res.statusCode}`));
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
  const m = /^\/([a-z]+)\/([^/]+)$/.exec(req.url);
  if (req.method !== "GET" || !m || !["n", "x", "c"].includes(m[1])) {
    reply(res, 404, "no such path\n");
    return;
  }
  const id = m[2];
  try {
    if (m[1] === "c") {
      await get(`/cb/${id}`);
    } else {
      await new Promise((r) => setImmediate(r));
    }
    reply(res, 200, `ok ${id}\n`);
  } catch (e) {
    reply(res, 502, `${e.message}\n`);
  }
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.listen(0, process.env.BIND || "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
