"""The ``act-operator`` command."""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    if sys.argv[1:2] == ["demo"]:
        from act_operator_lib.demo import main as demo

        asyncio.run(demo())
        return
    sys.exit("usage: act-operator demo")
