"""``make demo``: push a few thousand records through the ring logger to stdout.

Prints scipy's verbose=2 table layout for a synthetic, decaying cost, then the
logger's stats. (Becomes a ``curve_fit(..., verbose=2)`` run once the solver
lands.)
"""

from __future__ import annotations

import sys

from nlsq._ringlog import RingLogger

HEADER = "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
    "Iteration", "Total nfev", "Cost", "Cost reduction", "Step norm", "Optimality"
)
ROW = "{it:^15d}{nfev:^15d}{cost:^15.4e}{reduction:^15.2e}{step:^15.2e}{optimality:^15.2e}"


def main(n: int = 5000) -> dict[str, int]:
    """Push ``n`` rows to stdout through the ring and return the logger's stats."""
    print(HEADER, flush=True)
    with RingLogger(sink=None, capacity=1 << 14, policy="block") as log:
        tid = log.register(ROW)
        cost = 1.0e3
        for it in range(n):
            new_cost = cost * 0.999
            log.push(tid, it, it + 1, new_cost, cost - new_cost, 1.0 / (it + 1), new_cost * 1e-3)
            cost = new_cost
        log.flush()
        stats = log.stats()
    print(f"ring logger stats: {stats}", file=sys.stderr)
    return stats


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
