"""Cookbook I (async control patterns) benchmarks, all figures from one run.

    python benchmarks/bench_control.py

Runs ``_control_fanout.py`` (bounded fan-out against the ideal and against ``Send``) and
``_control_rate.py`` (rate-limiter accuracy and cost), each printing ``key=value`` lines:

    fanout_ratio_to_ideal=   FanoutNode, 1 000 items x 20 ms at limit 50, / 0.4 s  (target <= 1.10)
    fanout_vs_send=          FanoutNode time / one Send per item, max_concurrency=50 (target <= 0.75)
    rate_error_pct=          200 acquisitions/s over 5 s, 500 waiters              (target <= 2)
    limiter_vs_aiolimiter=   CPU per uncontended acquire / aiolimiter's            (target <= 1.0)
"""

from __future__ import annotations

import sys

import _control_fanout
import _control_rate


def main() -> None:
    for part in (_control_fanout, _control_rate):
        part.main()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
