"""Mutation testing with hand-listed mutants: apply each deliberate bug to a copy of the code, run the tests
that should catch it, and report whether they did.

    python tests/mutants/run.py                 # every mutant in mutants.py
    python tests/mutants/run.py --only NAME     # one mutant (repeat --only for more)
    python tests/mutants/run.py --list          # the mutants and the tests each one names

Each mutant replaces one exact snippet of one file (the snippet must occur exactly once, so a mutant that no
longer applies after the code changed is reported as STALE rather than silently skipped). The copy is a
temporary directory holding ``greedyprune/``, ``tests/``, ``pyproject.toml`` and ``README.md``; the tests
run there with that directory first on ``sys.path``, so the mutated package shadows the installed one
(checked before the first mutant). Before any mutant, the named tests must pass on the unmutated copy.

Exit status: 0 when every mutant was killed, 1 when some survived or were stale, 2 on a setup error.
Not part of the CI test run: a full run takes many minutes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutants import MUTANTS  # noqa: E402

COPIED = ("greedyprune", "tests", "pyproject.toml", "README.md")


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)


def environment(dest: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(dest) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_tests(dest: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=dest, env=environment(dest), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.perf_counter() - start
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, tail[-1] if tail else "", time.perf_counter() - start


def check_shadowing(dest: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import greedyprune; print(greedyprune.__file__)"], cwd=dest,
                         env=environment(dest), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(dest.resolve()):
        raise SystemExit(f"setup error: the copy's package is not the one imported ({out}); is greedyprune installed "
                         f"non-editable?")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    args = parser.parse_args(argv)
    names = [m["name"] for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("setup error: mutant names must be unique")
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        raise SystemExit(f"unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m["name"] in args.only]
    if args.list:
        for m in chosen:
            print(f"{m['name']:<32} {m['file']}\n    {m['why']}\n    tests: {' '.join(m['tests'])}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="greedyprune-mutants-") as tmp:
        dest = Path(tmp)
        copy_tree(dest)
        check_shadowing(dest)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m["tests"]})
            code, last, seconds = run_tests(dest, tests, args.timeout * 2)
            print(f"baseline (unmutated) {' '.join(tests)}: {last} [{seconds:.0f} s]", flush=True)
            if code != 0:
                print("setup error: the named tests fail without any mutant", file=sys.stderr)
                return 2
        for m in chosen:
            path = dest / m["file"]
            original = path.read_text()
            found = original.count(m["original"])
            if found != 1:
                status, last, seconds = "STALE", f"the snippet occurs {found} times in {m['file']}", 0.0
            else:
                path.write_text(original.replace(m["original"], m["replacement"]))
                try:
                    code, last, seconds = run_tests(dest, m["tests"], args.timeout)
                finally:
                    path.write_text(original)
                status = {0: "SURVIVED", -1: "killed (timeout)", 4: "ERROR (usage)", 5: "ERROR (no tests)"}.get(
                    code, "killed")
            results.append((m["name"], status))
            print(f"{m['name']:<32} {status:<16} {last} [{seconds:.0f} s]", flush=True)
    print("\nmutant -> result")
    for name, status in results:
        print(f"  {name:<32} {status}")
    survived = [n for n, s in results if not s.startswith("killed")]
    print(f"{len(results) - len(survived)} of {len(results)} killed"
          + (f"; not killed: {survived}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
