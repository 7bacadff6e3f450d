"""How well can a pooled linear crop classifier do on the `match` task? A mixed-integer bound.

A crop-only model that pools its region features before a linear classifier scores class
c by a sum of per-region terms: ``S_c = H(key level, c) + sum_j G(level j, texture at level
j, c)`` with one candidate per region (docs/synthetic.md). Over the ``K * K!`` equally
likely layouts (the key's level, the permutation of textures over the levels) this script
finds the terms that get the most layouts right, as a mixed-integer program (scipy's
HiGHS): a binary per layout, "right" meaning the label's score beats every other class by
a margin of 1 (the terms are bounded by 10, so the margin is no restriction in practice).

    python benchmarks/additive_crop_bound.py           # K = 2, 3, 4; a few minutes

Prints a table and writes JSON rows to benchmarks/results/additive_crop_bound.json. A run
stopped by the time limit reports the best layout count found (a lower bound on the
optimum) and says so.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, save_rows  # noqa: E402

MARGIN, LIMIT = 1.0, 10.0  # score margin of a right layout; bound on every term


def best_additive(k: int, seconds: float) -> dict:
    """The most layouts of K levels and textures a sum of per-region terms gets right."""
    layouts = [(key, p) for key in range(k) for p in itertools.permutations(range(k))]
    n_h, n_g = k * k, k * k * k  # H[key level, class], G[level, texture, class]
    n = n_h + n_g + len(layouts)

    def h(level: int, c: int) -> int:
        return level * k + c

    def g(level: int, texture: int, c: int) -> int:
        return n_h + (level * k + texture) * k + c

    rows = []
    big = 4 * LIMIT * (k + 1)  # relaxes a wrong layout's constraints
    for i, (key, textures) in enumerate(layouts):
        label = textures[key]
        for c in range(k):
            if c == label:
                continue
            row = np.zeros(n)  # S_label - S_c - big * (1 - right_i) >= MARGIN
            row[h(key, label)] += 1
            row[h(key, c)] -= 1
            for level, texture in enumerate(textures):
                row[g(level, texture, label)] += 1
                row[g(level, texture, c)] -= 1
            row[n_h + n_g + i] = -big
            rows.append(row)
    lower, upper = np.full(n, -LIMIT), np.full(n, LIMIT)
    lower[n_h + n_g :], upper[n_h + n_g :] = 0, 1
    cost = np.zeros(n)
    cost[n_h + n_g :] = -1  # maximise the layouts right
    integrality = np.zeros(n)
    integrality[n_h + n_g :] = 1
    result = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), MARGIN - big, np.inf),
        integrality=integrality,
        bounds=Bounds(lower, upper),
        options={"time_limit": seconds},
    )
    right = int(round(-result.fun)) if result.x is not None else 0
    return {
        "textures": k,
        "layouts": len(layouts),
        "right": right,
        "accuracy": right / len(layouts),
        "chance": 1 / k,
        "optimal": bool(result.status == 0),  # False: stopped by the time limit
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--seconds", type=float, default=200.0, help="time limit per K")
    args = parser.parse_args()
    rows = [best_additive(k, args.seconds) for k in args.textures]
    save_rows("additive_crop_bound", rows, ("textures",))
    print_table(
        "Best pooled linear crop classifier on match (fixed levels), over all layouts",
        rows,
        [
            ("K", "textures", "d"),
            ("layouts", "layouts", "d"),
            ("right", "right", "d"),
            ("accuracy", "accuracy", ".3f"),
            ("chance", "chance", ".3f"),
            ("optimal", "optimal", ""),
        ],
    )


if __name__ == "__main__":
    main()
