"""CPU cost per upstream request of the gateway's HTTP client against aiohttp and httpx.

    python benchmarks/upstream_client.py [--requests 4000] [--rounds 5] [--concurrency 16]

A subprocess on 127.0.0.1 answers every POST at once with a fixed ~600-byte JSON body
(Content-Length, keep-alive), so what is measured is the client: the CPU time of this process
(`time.process_time`) per request, `--concurrency` callers sharing one pooled client, after a
warm-up; the median of `--rounds` rounds, clients interleaved so load on the box hits each alike.
This is why `llmroute.gateway.backends.http` is hand-written (see its docstring). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

SERVER = r"""
import asyncio, sys
BODY = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
        b'"content":"' + b"a" * 500 + b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,'
        b'"completion_tokens":5}}')
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        while (i := self.buf.find(b"\r\n\r\n")) >= 0:
            n = 0
            for line in self.buf[:i].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if len(self.buf) < i + 4 + n:
                return
            self.buf = self.buf[i + 4 + n:]
            self.t.write(RESP)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""

BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-benchmark"}


async def _client(kind: str, url: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(one request, close) for a client kind."""
    if kind == "aiohttp":
        import aiohttp

        sess = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))

        async def one_aiohttp() -> None:
            async with sess.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()

        return one_aiohttp, sess.close
    if kind == "httpx":
        import httpx

        hc = httpx.AsyncClient(limits=httpx.Limits(max_connections=1024), trust_env=False)

        async def one_httpx() -> None:
            r = await hc.post(url, content=BODY, headers=HEADERS)
            _ = r.content

        return one_httpx, hc.aclose
    from llmroute.gateway.backends.http import HTTPClient
    from llmroute.gateway.backends.proxies import ProxySettings

    c = HTTPClient(proxy=ProxySettings.none())

    async def one_llmroute() -> None:
        await c.request("POST", url, HEADERS, BODY)

    return one_llmroute, c.close


async def _round(kind: str, url: str, n: int, conc: int) -> float:
    one, close = await _client(kind, url)

    async def worker(k: int) -> None:
        for _ in range(k):
            await one()

    await asyncio.gather(*(worker(20) for _ in range(conc)))  # warm-up: connections open
    t0 = time.process_time()
    await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
    dt = time.process_time() - t0
    await close()
    return dt / (n // conc * conc) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--clients", default="llmroute,aiohttp,httpx")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        kinds = args.clients.split(",")
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                runs[k].append(asyncio.run(_round(k, url, args.requests, args.concurrency)))
    finally:
        server.kill()
        server.wait()
    out = {
        "cpu_us_per_request_median": {k: round(statistics.median(v), 1) for k, v in runs.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "requests": args.requests,
        "concurrency": args.concurrency,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
