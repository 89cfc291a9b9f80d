// The Promise.all fan-out tier of the linking evaluation (tests/src/topology.rs): Node's
// standard library only.
//
//     node eval_fanout_node.js LEAF_PORT
//
// Serves GET /r/<id>: calls GET /b/<id> and GET /t/<id> on the Python leaf service
// concurrently (`Promise.all`) through one keep-alive http.Agent, then answers 200 "ok <id>".
// Binds an ephemeral port on 127.0.0.1 and prints "PORT <n>" once listening. Nothing here knows
// about tracing.
"use strict";

const http = require("node:http");

const leaf = Number(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function get(path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port: leaf, path, agent }, (res) => {
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
  const m = /^\/r\/([^/]+)$/.exec(req.url);
  if (req.method !== "GET" || !m) {
    reply(res, 404, "no such path\n");
    return;
  }
  const id = m[1];
  try {
    await Promise.all([get(`/b/${id}`), get(`/t/${id}`)]);
    reply(res, 200, `ok ${id}\n`);
  } catch (e) {
    reply(res, 502, `${e.message}\n`);
  }
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
