"""Run LangGraph's own dev server (``langgraph dev``, in-memory runtime) for a test.

    with serve(Path("tests/cookbook/stream_server_app")) as url:   # http://127.0.0.1:PORT
        client = get_client(url=url)

The server runs in its own process group, bound to 127.0.0.1 on a free port, with version
checks, analytics, tracing and license calls switched off so nothing waits on the network.
It runs in a temporary copy of the project; leaving the block stops it (SIGTERM to the
group, then SIGKILL) and removes the copy and its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["serve"]

STARTUP_TIMEOUT = 90.0
"""Seconds the server may take to answer ``/ok``; the in-memory runtime imports a lot."""

# Variables that would make the server call LangSmith, check versions or send analytics.
_QUIET = {
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGSMITH_TRACING": "false",
    "LANGSMITH_TRACING_V2": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGCHAIN_TRACING": "false",
    "PYTHONUNBUFFERED": "1",
}
_SKIPPED = shutil.ignore_patterns(".langgraph_api", "__pycache__")
_DROPPED = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_CLOUD_LICENSE_KEY")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ok", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def serve(project_dir: Path) -> Iterator[str]:
    """Serve the ``langgraph.json`` project in ``project_dir``; yield its base URL."""
    if not (project_dir / "langgraph.json").is_file():
        raise FileNotFoundError(f"serve() needs {project_dir}/langgraph.json")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).with_name("langgraph")
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED} | _QUIET
    # A copy, because the in-memory runtime saves its state in .langgraph_api/ beside the
    # project: the test tree stays clean and every server starts empty.
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile("w+") as log:
        shutil.copytree(project_dir, workdir, dirs_exist_ok=True, ignore=_SKIPPED)
        process = subprocess.Popen(
            [
                str(cli),
                "dev",
                "--no-browser",
                "--no-reload",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--server-log-level",
                "warning",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it stops its children
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _answers(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(
                        f"langgraph dev in {project_dir} did not answer on {url}"
                        f" (exit code {process.poll()}):\n{log.read()[-4000:]}"
                    )
                time.sleep(0.2)
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is still alive
    process.wait()
