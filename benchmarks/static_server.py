"""A static HTTP/1.1 server of a folder's files, from RAM, with an injected first-byte latency.

    python benchmarks/static_server.py ROOT --latency-ms 50

Stands in for object storage in bench_remote.py: each answer waits ``latency-ms`` before its first
byte, as S3 does (50-100 ms), and many requests wait at once. asyncio on one thread, files held in
memory and keep-alive connections keep its own CPU cost low, since on a small benchmark machine it
shares the cores with the loader it serves. It prints ``port <n>`` once listening, and exits when its
standard input closes (the benchmark ended, or died) or after ``--lifetime-s``. It counts the requests
it answers by method; ``GET /__requests`` (not counted) answers them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit


def load(root: Path) -> dict[str, bytes]:
    return {"/" + p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


COUNTS = "/__requests"


async def serve(files: dict[str, bytes], latency_s: float, lifetime_s: float) -> None:
    counts: dict[str, int] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = (part.decode("latin-1") for part in head.split(b" ", 2)[:2])
                path = unquote(urlsplit(target).path)
                if path == COUNTS:
                    counted = json.dumps(counts).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(counted), counted))
                    await writer.drain()
                    continue
                counts[method] = counts.get(method, 0) + 1
                body = files.get(path)
                if latency_s:
                    await asyncio.sleep(latency_s)
                if body is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    if method != "HEAD":  # a HEAD's answer has the length, never the body
                        writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass  # the client closed the connection, or sent something that is not a request
        except asyncio.CancelledError:
            pass  # the server is stopping; Python 3.11 prints a traceback for each cancelled handler otherwise
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent is gone
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with server:
        await asyncio.wait_for(stop, lifetime_s) if lifetime_s else await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--lifetime-s", type=float, default=3600.0)
    args = parser.parse_args()
    with contextlib.suppress(asyncio.TimeoutError):  # --lifetime-s ran out
        asyncio.run(serve(load(args.root), args.latency_ms / 1000, args.lifetime_s))


if __name__ == "__main__":
    main()
