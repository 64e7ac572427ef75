"""Worker processes of the shared-state tests and benchmarks (``tests.cookbook.shared_worker``).

    workers = start_shared_workers(4, "cache", redis_url, "50", "1.0", "ok", log=log)
    summaries = worker_summaries(workers)  # one JSON summary a worker, or RuntimeError

Every worker waits until the same wall-clock start time, so the processes really run at
once; the start lies ``start_in`` seconds ahead, long enough for each to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def start_shared_workers(
    count: int,
    mode: str,
    redis_url: str,
    *args: str,
    log: Path | str = os.devnull,
    start_in: float = 5.0,
) -> list[subprocess.Popen[str]]:
    """Start ``count`` workers of ``mode`` that begin together ``start_in`` seconds from now."""
    start_at = time.time() + start_in
    command = [
        sys.executable,
        "-m",
        "tests.cookbook.shared_worker",
        mode,
        redis_url,
        str(start_at),
        str(log),
        *args,
    ]
    return [
        subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]


def finish_workers(
    workers: list[subprocess.Popen[str]], timeout: float = 120
) -> list[tuple[int, Any]]:
    """Each worker's exit code with its JSON summary, or with its stderr when it failed.

    A worker still running after ``timeout`` (or when waiting is interrupted) is killed, so
    no process outlives the caller.
    """
    results: list[tuple[int, Any]] = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=timeout)
            results.append((worker.returncode, json.loads(out) if worker.returncode == 0 else err))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return results


def worker_summaries(workers: list[subprocess.Popen[str]], timeout: float = 120) -> list[Any]:
    """Each worker's JSON summary; RuntimeError with its stderr if any worker failed."""
    results = finish_workers(workers, timeout)
    for code, found in results:
        if code != 0:
            raise RuntimeError(f"a shared worker exited with {code}:\n{found}")
    return [found for _, found in results]
