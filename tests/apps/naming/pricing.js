// A plain Node.js HTTP server for ztrace's naming test: `node naming/pricing.js` must be
// exported as service.name "pricing". Prints "PORT <n>" once listening.
const http = require("http");
const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end("pricing\n");
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
