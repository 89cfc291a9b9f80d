// HTTPS with Node.js's own OpenSSL (TLSWrap, memory BIOs) for ztrace's tests.
//
//   node https_node.js server CERT KEY [NEXT_PORT]
//       serves GET /item/N on 127.0.0.1 with status 210 + N % 40 after a random pause, so
//       responses on concurrent connections interleave; with NEXT_PORT it first calls
//       https://127.0.0.1:NEXT_PORT/item/N itself (client → A → B). Prints "PORT <n>".
//   node https_node.js client PORT COUNT CONCURRENCY [fresh]
//       sends COUNT requests over at most CONCURRENCY keep-alive connections, all at once
//       ("fresh": a new connection per request, so OpenSSL's SSL objects are freed and their
//       memory reused); exits 1 unless each answer has the status and body its path asks for.
'use strict';
const fs = require('fs');
const https = require('https');

const status = (n) => 210 + (n % 40);
const agent = (sockets) =>
  new https.Agent({ keepAlive: true, maxSockets: sockets, rejectUnauthorized: false });

function get(port, path, ag) {
  return new Promise((resolve, reject) => {
    https
      .get({ host: '127.0.0.1', port, path, agent: ag, rejectUnauthorized: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

function server(cert, key, next) {
  const ag = agent(4);
  const srv = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    const m = /^\/item\/(\d+)$/.exec(req.url);
    const n = m ? Number(m[1]) : 0;
    const answer = (extra) => {
      const body = `item ${n}${extra}`;
      res.writeHead(m ? status(n) : 404, { 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    };
    setTimeout(() => {
      if (!next) return answer('');
      get(next, req.url, ag).then(
        (r) => answer(` via ${r.status}`),
        (e) => answer(` failed ${e.message}`),
      );
    }, Math.floor(Math.random() * 20));
  });
  srv.keepAliveTimeout = 30000;
  srv.listen(0, '127.0.0.1', () => console.log(`PORT ${srv.address().port}`));
}

async function client(port, count, concurrency, fresh) {
  const ag = agent(concurrency);
  let answers = [];
  if (fresh) {
    // Waves of CONCURRENCY requests, each on a connection of its own (`agent: false` closes it
    // after the answer): the next wave's SSL objects take the memory the last one freed.
    for (let n = 0; n < count; n += concurrency) {
      const wave = [];
      for (let i = n; i < Math.min(count, n + concurrency); i++)
        wave.push(get(port, `/item/${i}`, false).then((r) => [i, r]));
      answers = answers.concat(await Promise.all(wave));
    }
  } else {
    const all = [];
    for (let n = 0; n < count; n++) all.push(get(port, `/item/${n}`, ag).then((r) => [n, r]));
    answers = await Promise.all(all);
  }
  let bad = 0;
  for (const [n, r] of answers) {
    if (r.status !== status(n) || !r.body.startsWith(`item ${n}`)) {
      console.error(`/item/${n}: ${r.status} ${r.body}`);
      bad++;
    }
  }
  ag.destroy();
  process.exit(bad ? 1 : 0);
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'server') server(args[0], args[1], args[2] && Number(args[2]));
else if (mode === 'client') client(Number(args[0]), Number(args[1]), Number(args[2]), args[3] === 'fresh');
else {
  console.error('usage: https_node.js server CERT KEY [NEXT_PORT] | client PORT COUNT CONCURRENCY');
  process.exit(2);
}
