"""The asyncio fan-out tier of the linking evaluation (tests/src/topology.rs): aiohttp on the
default event loop.

    python3 eval_fanout_asyncio.py LEAF_PORT [TRUTH_FILE]

Serves GET /r/<id>: calls GET /b/<id> and GET /t/<id> on the Python leaf service *concurrently*
(`asyncio.gather`) through one aiohttp ClientSession shared by every request (one keep-alive
connection pool), then answers 200 "ok <id>". Many requests are in flight on the one thread,
and the pool hands whichever idle connection it has to whichever call asks next.

With TRUTH_FILE the calls carry no token of their request: each goes to /b/<nonce> or
/t/<nonce> with a fresh nonce, and the line "<nonce> <id>" is appended to TRUTH_FILE so the
scorer knows the true tree (the tracer does not read the file). Binds an ephemeral port on
127.0.0.1 and prints "PORT <n>" once listening. Nothing here knows about tracing.
"""

import asyncio
import itertools
import sys

import aiohttp
from aiohttp import web

LEAF = int(sys.argv[1])
TRUTH = open(sys.argv[2], "a", buffering=1) if len(sys.argv) > 2 else None
NONCES = itertools.count(1)


async def get(session, path):
    async with session.get("http://127.0.0.1:%d%s" % (LEAF, path)) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError("GET %s: %d" % (path, r.status))
        return body


async def handle(request):
    rid = request.match_info["id"]
    b, t = rid, rid
    if TRUTH is not None:
        b, t = "z%d" % next(NONCES), "z%d" % next(NONCES)
        TRUTH.write("%s %s\n%s %s\n" % (b, rid, t, rid))
    session = request.app["session"]
    try:
        await asyncio.gather(get(session, "/b/" + b), get(session, "/t/" + t))
    except Exception as e:  # noqa: BLE001 - answered as a 502 with the reason
        return web.Response(status=502, text="%s\n" % e)
    return web.Response(text="ok %s\n" % rid)


async def main():
    app = web.Application()
    app.router.add_get("/r/{id}", handle)
    # Idle pooled connections stay open longer than any run.
    app["session"] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=300)
    )
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=300)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print("PORT", port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
