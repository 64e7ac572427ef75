"""Local servers the benchmarks start in their own process (so they do not share its GIL).

server, base = start_local_server(sys.executable, __file__, "--serve")  # runs serve_app
try:
    ...  # requests to base, e.g. "http://127.0.0.1:41234/work"
finally:
    server.terminate()
    server.wait(10)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.pg_server import free_port  # noqa: E402


def start_local_server(
    *command: str, stdout: int | None = None, timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``command`` with a free port as its last argument; return it and its base URL.

    Returns once the port accepts connections; kills the process and raises RuntimeError if
    it does not within ``timeout`` seconds.
    """
    port = free_port()
    server = subprocess.Popen([*command, str(port)], stdout=stdout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    server.kill()
    server.wait()
    raise RuntimeError(f"the benchmark server {command[1:]} did not start on port {port}")


def serve_app(app: Any, port: int, *, backlog: int = 128) -> None:
    """Serve the aiohttp ``app`` on 127.0.0.1:``port`` on uvloop until killed: the body of a
    benchmark's ``--serve PORT`` mode."""
    import asyncio

    import uvloop
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=backlog).start()
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        loop.run(main())
