"""What ``import refresher`` costs a fresh interpreter, against ``import requests_oauthlib``.

For cron jobs and CLI tools that start Python for every run. Each statement runs in a new
interpreter (``python -c ...``) many times, interleaved, and the table shows the medians;
``python -c pass`` is the floor every run pays.

    python benchmarks/startup.py                 # 30 runs of each
    python benchmarks/startup.py --runs 60 --json
    python benchmarks/startup.py --explain       # which modules refresher adds, by cost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, progress  # noqa: E402

STATEMENTS: dict[str, str] = {
    "python -c pass": "pass",
    "import requests_oauthlib": "import requests_oauthlib",
    "import refresher": "import refresher",
}
FLOOR = "python -c pass"
OAUTH = "import requests_oauthlib"
REFRESHER = "import refresher"

# Parts that `import refresher` must not load: they are imported when first used (asyncio
# by the async front ends, filelock by a JSONTokenStore's first lock).
LAZY_PARTS = ("redis", "refresher.stores.redis", "refresher.cli", "refresher.testing",
              "refresher.login", "asyncio", "filelock", "flask", "tweepy", "pytest")


def child_environment() -> dict[str, str]:
    """The environment of the timed interpreters: ours, allowed to write bytecode.

    With PYTHONDONTWRITEBYTECODE set (common in containers and CI), a source checkout is
    compiled again on every import while pip-installed packages come with their .pyc
    files: the comparison would measure the compiler, not the import. The first,
    untimed runs write the missing .pyc files, as an installed package would have them.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_once(code: str, env: dict[str, str]) -> float:
    """Seconds for a fresh interpreter to run ``code`` and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return time.perf_counter() - start


def loaded_lazy_parts() -> list[str]:
    """Which of LAZY_PARTS a fresh ``import refresher`` has loaded (ideally none)."""
    code = ("import json, sys, refresher; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=child_environment()).stdout
    modules = set(json.loads(out))
    return [name for name in LAZY_PARTS if name in modules]


def import_times(statement: str) -> dict[str, tuple[int, int]]:
    """``python -X importtime``: module -> (self us, cumulative us)."""
    run_once(statement, child_environment())  # write missing .pyc files first
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], check=True,
                         capture_output=True, text=True, env=child_environment()).stderr
    result: dict[str, tuple[int, int]] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = (part.strip() for part in line[len("import time:"):].split("|"))
        result[name] = (int(own), int(total))
    return result


def explain(top: int) -> str:
    """The modules ``import refresher`` loads that ``import requests_oauthlib`` does not."""
    ours = import_times("import refresher")
    theirs = import_times("import requests_oauthlib")
    extra = sorted(((own, name) for name, (own, _) in ours.items() if name not in theirs),
                   reverse=True)
    lines = [f"modules loaded by `import refresher` but not by `import requests_oauthlib`: "
             f"{len(extra)}, {sum(own for own, _ in extra) / 1000:.1f} ms of self time "
             "under -X importtime (which inflates it)", ""]
    lines += [f"{own / 1000:8.2f} ms  {name}" for own, name in extra[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fresh-interpreter cost of `import refresher` against "
        "`import requests_oauthlib` (and of a bare `python -c pass`).",
    )
    parser.add_argument("--runs", type=int, default=30,
                        help="interpreters started per statement, interleaved (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--explain", action="store_true",
                        help="instead of the table, list the modules refresher adds, by "
                        "their -X importtime self time")
    parser.add_argument("--top", type=int, default=25, help="rows of --explain output")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.explain:
        print(explain(args.top))
        return 0

    env = child_environment()
    for code in STATEMENTS.values():
        run_once(code, env)  # write missing .pyc files, warm the OS file cache
    samples: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    names = list(STATEMENTS)
    for index in range(args.runs):
        for name in names[index % 3:] + names[:index % 3]:
            samples[name].append(run_once(STATEMENTS[name], env) * 1000)
        if (index + 1) % 10 == 0 or index + 1 == args.runs:
            progress(f"run {index + 1}/{args.runs}")

    floor = median(samples[FLOOR])
    medians = {name: median(values) for name, values in samples.items()}
    # Per run, refresher's time over requests_oauthlib's of the same iteration, then the median.
    total_ratio = median([a / b for a, b in zip(samples[REFRESHER], samples[OAUTH], strict=True)])
    net = {name: medians[name] - floor for name in STATEMENTS}
    rows = [
        [name, medians[name], net[name],
         None if name == FLOOR else medians[name] / medians[OAUTH],
         None if name == FLOOR else (net[name] / net[OAUTH] if net[OAUTH] > 0 else None)]
        for name in STATEMENTS
    ]
    columns = ["statement", "ms (median)", "ms over python -c pass", "vs requests_oauthlib",
               "net vs requests_oauthlib"]
    lazy = loaded_lazy_parts()
    notes = [
        f"{args.runs} fresh interpreters per statement, interleaved; {sys.executable}; "
        "bytecode (.pyc) written first for every package, as an install has it.",
        "Loaded by `import refresher` among " + ", ".join(LAZY_PARTS) + ": "
        + (", ".join(lazy) if lazy else "none") + ".",
        f"Goal: import refresher within 20 % of import requests_oauthlib: "
        f"{(total_ratio - 1) * 100:+.1f} % (median of per-run ratios) -> "
        f"{'met' if total_ratio <= 1.20 else 'NOT met'}.",
    ]
    emit(args.json, "startup: a fresh interpreter importing the library", columns, rows, notes,
         extra={"samples_ms": samples, "lazy_parts_loaded": lazy,
                "ratio_median_of_runs": total_ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
