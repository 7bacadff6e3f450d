"""Score every case with the official xView3 scorer and write ``expected.json``.

The official scorer is ``reference/metric.py`` of https://github.com/DIUx-xView/xview3-reference
(it is not vendored here). Get it and point this script at its ``reference`` folder::

    git clone https://github.com/DIUx-xView/xview3-reference /tmp/xview3-reference
    python tests/metrics/xview3_cases/make_cases.py
    python tests/metrics/xview3_cases/make_expected.py --reference /tmp/xview3-reference/reference

It needs numpy, pandas, scipy and tqdm. Each run goes through the scorer's own
command-line ``main`` (its pre-processing included) with the leaderboard's flags
(``--distance_tolerance 200 --shore_tolerance 2 --shore_root ... --drop_low_detect
--costly_dist``), varied per run as ``cases.json`` says. The tests never run this script;
they compare ``xtimage.metrics.xview3.score_xview3`` with the numbers it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def reference_commit(reference: Path) -> str | None:
    """The git commit of the reference checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "-C", str(reference), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def run_reference(metric, case: Path, options: dict) -> dict:
    """The official scores of one case, or the error the scorer raised."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "scores.json"
        args = argparse.Namespace(
            scene_id=None,
            inference_file=str(case / "predictions.csv"),
            label_file=str(case / "labels.csv"),
            output=str(output),
            distance_tolerance=200,
            shore_tolerance=2,
            shore_root=str(case / "shoreline") if options["shore"] else None,
            score_all=options["score_all"],
            drop_low_detect=options["drop_low_detect"],
            costly_dist=options["costly_dist"],
        )
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                metric.main(args)
        except Exception as exc:  # the scorer's failure is itself a finding
            return {"error": f"{type(exc).__name__}: {exc}"}
        return json.loads(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help="xview3-reference/reference")
    parser.add_argument("--output", type=Path, default=HERE / "expected.json")
    parser.add_argument(
        "--agree-with",
        type=Path,
        help="an expected.json written in another environment: check that every number is "
        "the same and record that environment's versions",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(args.reference))  # metric.py imports its sibling constants.py
    import metric
    import numpy
    import pandas
    import scipy

    runs = json.loads((HERE / "cases.json").read_text())
    results = {}
    for name, run in runs.items():
        scores = run_reference(metric, HERE / run["case"], run["options"])
        results[name] = {"case": run["case"], "options": run["options"], "scores": scores}
    meta = {
        "reference": "https://github.com/DIUx-xView/xview3-reference reference/metric.py",
        "reference_commit": reference_commit(args.reference) or "unknown",
        "versions": {
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "pandas": pandas.__version__,
            "scipy": scipy.__version__,
        },
    }
    if args.agree_with:
        other = json.loads(args.agree_with.read_text())
        if other["runs"] != results:
            raise SystemExit(f"{args.agree_with}: the scores differ from this environment's")
        meta["same_numbers_with"] = other["meta"]["versions"]
    args.output.write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
