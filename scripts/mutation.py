"""Mutation testing of the core modules with mutmut: how many plausible bugs (a flipped comparison, a changed
constant, a dropped argument) the tests catch, per module. Run by scripts/mutation.sh; not part of CI.

Each module is mutated in a scratch copy of the working tree, with only the test files that cover it, so most take
minutes (postgres.py, whose mutants rerun both databases' tests, 48; every module, one job each: 2-3 hours on 2 cores).
A surviving mutant is either killed by a test that asserts the behaviour, or recorded in
tests/mutation_equivalent.txt as equivalent (it cannot change behaviour), with a one-line reason.

    scripts/mutation.sh                      # every module
    scripts/mutation.sh Wan2GP/schedule.py   # one (or several)
    MUTATION_JOBS=1 scripts/mutation.sh ...  # parallel mutant runs (default: the number of cores)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "tests" / "mutation_equivalent.txt"
REQUIRED_SCORE = 0.90

# Module (or package folder) -> the test files that cover it. mutmut first runs them all once to learn which tests
# reach which function, then runs only those for each mutant of that function.
TARGETS: dict[str, list[str]] = {
    "Wan2GP/schedule.py": [
        "tests/params/test_params_schedule.py",
        "tests/params/test_params_phase_config.py",
        "tests/params/test_params_catalog.py",
        "tests/engine/test_request.py",
    ],
    # The engine modules get their focused tests only: every mutant of `denoise` reruns each test that reaches it,
    # and the whole-run comparisons with diffusers (test_equivalence_conditioning, test_wan_family) take minutes each.
    # Their scores are therefore what these files alone catch; the full suite catches at least as much.
    "Wan2GP/sampler.py": [
        "tests/engine/test_sampler_steps.py",
        "tests/engine/test_equivalence.py",
    ],
    "Wan2GP/conditioning.py": ["tests/engine/test_conditioning_layouts.py"],
    "Wan2GP/attention.py": ["tests/engine/test_attention.py"],
    "Wan2GP/loras.py": [
        "tests/engine/test_loras.py",
        "tests/engine/test_lora_layouts.py",
    ],
    "Wan2GP/request.py": [
        "tests/engine/test_request.py",
        "tests/engine/test_request_checks.py",
        "tests/params/test_upstream_definitions.py",
    ],
    "source/params/phase_config.py": [
        "tests/params/test_params_phase_config.py",
        "tests/params/test_params_schedule.py",
        "tests/params/test_params_resolve.py",
        "tests/params/test_params_plan_cli.py",
    ],
    "source/tasks/travel_plan.py": [
        "tests/tasks/test_travel_plan.py",
        "tests/params/test_params_travel_payloads.py",
    ],
    "source/media/stitch.py": ["tests/media/test_media_stitch.py"],
    # The queue package, one file at a time: as one target every mutant of claim/enqueue/the row decoder reran most of
    # tests/queue against both databases (~70 s each), too long for one run on 2 cores. The backend-independent Python
    # runs against SQLite, plus the tests of Reigh's uuid-keyed table on PostgreSQL (its only branches: ids checked
    # before they reach a uuid cast) and the row decoder's (QUEUE_PYTHON); its SQL is not mutated (mutmut mutates
    # Python), and the planted SQL bugs of README "Tests that bite" are what guards it on every dialect.
    "source/queue/rows.py": ["tests/queue/test_queue_rows.py"],
    "source/queue/present.py": ["tests/queue/test_queue_present.py"],
    "source/queue/edge.py": ["tests/queue/test_edge_queue.py"],
    "source/queue/postgres.py": [
        "tests/queue/test_queue_semantics.py",
        "tests/queue/test_queue_schema.py",
        "tests/queue/test_reigh_queue.py",
        "tests/queue/test_queue_rows.py",
    ],
    **{
        f"source/queue/{name}.py": [
            "tests/queue/test_queue_semantics.py",
            "tests/queue/test_queue_schema.py",
            "tests/queue/test_reigh_queue.py",
            "tests/queue/test_queue_rows.py",
            "tests/queue/test_sqlite_backend.py",
        ]
        for name in ("core", "enqueue", "dag", "admin", "workers", "base", "schema", "sqlite")
    },
}
# Extra pytest arguments per target. `-k` matches markers and the module's name too: this drops the tests marked or
# parametrized `postgres` but keeps every test of test_reigh_queue.py.
QUEUE_PYTHON = ["-k", "not postgres or reigh"]
PYTEST_ARGS: dict[str, list[str]] = {
    **{
        f"source/queue/{name}.py": QUEUE_PYTHON
        for name in ("core", "enqueue", "dag", "admin", "workers", "base", "schema", "sqlite")
    },
    # torch.compile cannot trace the trampolines mutmut puts in every mutated function: the compiled test is left out
    "Wan2GP/attention.py": ["-k", "not compiled"],
}


@dataclass
class ModuleScore:
    target: str
    killed: int = 0
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # timeouts, suspicious, not checked ...
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.killed + len(self.survived) + len(self.equivalent) + sum(self.other.values())

    @property
    def score(self) -> float:
        # a timeout counts as caught (the mutant made the tests hang); anything else unexplained does not
        caught = self.killed + len(self.equivalent) + self.other.get("timeout", 0)
        return caught / self.total if self.total else 1.0


def read_equivalents(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """mutant name -> why it cannot change behaviour. Lines: `<mutant name>: <reason>`; # starts a comment."""
    if not path.is_file():
        return {}
    equivalents = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(":")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: expected `<mutant name>: <reason>`, got {line!r}")
        equivalents[name.strip()] = reason.strip()
    return equivalents


def scratch_copy() -> Path:
    """The working tree as git sees it (tracked and untracked, not ignored) in a temporary folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    folder = Path(tempfile.mkdtemp(prefix="mutation-"))
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = folder / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


def mutmut_config(target: str, tests: list[str]) -> str:
    package = target.split("/")[0]  # the whole package is copied, only the target is mutated
    only = f"{target}/*" if not target.endswith(".py") else target
    torch_tests = any(test.startswith("tests/engine") for test in tests)
    lines = [
        "[mutmut]",
        f"source_paths={package}",
        f"only_mutate={only}",
        "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
        "pytest_add_cli_args=" + "\n    ".join(["-p", "no:cacheprovider", "-q", "-x", *PYTEST_ARGS.get(target, [])]),
        # What a log line says is for people, not behaviour the tests guard: its statements are not mutated (nor a
        # lambda that only logs, e.g. a retry's before_sleep).
        r"do_not_mutate_patterns=(^\s*|lambda \w*: )logger\.(trace|debug|info|warning|error)\(",
        # torch is not fork-safe once it has run: fork each mutant from a server that has only imported it
        f"process_isolation={'forkserver' if torch_tests else 'fork'}",
    ]
    return "\n".join(lines) + "\n"


def run_target(target: str, jobs: int, equivalents: dict[str, str], mutmut: str) -> ModuleScore:
    folder = scratch_copy()
    try:
        (folder / "setup.cfg").write_text(mutmut_config(target, TARGETS[target]))
        started = time.monotonic()
        run = subprocess.run([mutmut, "run", "--max-children", str(jobs)], cwd=folder, capture_output=True, text=True)
        score = ModuleScore(target, seconds=time.monotonic() - started)
        if run.returncode != 0:
            raise SystemExit(f"{target}: mutmut run failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
        listed = subprocess.run(
            [mutmut, "results", "--all", "true"], cwd=folder, check=True, capture_output=True, text=True
        ).stdout
        for line in listed.splitlines():
            name, _, status = line.strip().rpartition(": ")
            if not name:
                continue
            if status == "killed":
                score.killed += 1
            elif status == "survived":
                (score.equivalent if name in equivalents else score.survived).append(name)
            else:
                score.other[status] = score.other.get(status, 0) + 1
        score.survived_diffs = {  # type: ignore[attr-defined]
            name: subprocess.run([mutmut, "show", name], cwd=folder, capture_output=True, text=True).stdout
            for name in score.survived
        }
        return score
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def changed_lines(diff: str) -> str:
    """The -/+ lines of a mutant's diff, for the survivor list."""
    lines = [line for line in diff.splitlines() if re.match(r"^[-+](?![-+])", line)]
    return "\n".join(f"        {line}" for line in lines[:6])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="MODULE", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", os.cpu_count() or 2)))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the scores and survivors as JSON")
    args = parser.parse_args(argv)
    unknown = [target for target in args.targets if target not in TARGETS]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; expected some of {', '.join(TARGETS)}")
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    equivalents = read_equivalents()
    scores = []
    for target in args.targets or list(TARGETS):
        print(f"mutating {target} ...", flush=True)
        score = run_target(target, args.jobs, equivalents, mutmut)
        scores.append(score)
        print(
            f"  {score.score:6.1%}  {score.total} mutants in {score.seconds:.0f} s: {score.killed} killed, "
            f"{len(score.equivalent)} recorded equivalent, {len(score.survived)} survived, other {score.other or '-'}",
            flush=True,
        )
        if args.json:  # after every module: a run stopped part way keeps what it measured
            write_scores(args.json, scores)

    print("\nmodule                              score   mutants  killed  equivalent  survived  other")
    for score in scores:
        other = ", ".join(f"{key} {value}" for key, value in sorted(score.other.items())) or "-"
        print(
            f"{score.target:34} {score.score:7.1%} {score.total:9} {score.killed:7} {len(score.equivalent):11} "
            f"{len(score.survived):9}  {other}"
        )
    for score in scores:
        if score.survived:
            print(f"\nsurvivors in {score.target}:")
            for name in score.survived:
                print(f"    {name}\n{changed_lines(score.survived_diffs[name])}")  # type: ignore[attr-defined]
    seen = {name for score in scores for name in score.equivalent}
    stale = [
        name for name in equivalents if name not in seen and any(name.startswith(_prefix(s.target)) for s in scores)
    ]
    if stale:
        print(
            f"\n{EQUIVALENT_FILE.name}: {len(stale)} entries name no surviving mutant now (code changed?): {stale[:10]}"
        )
    if args.json:
        write_scores(args.json, scores)
    below = [score.target for score in scores if score.score < REQUIRED_SCORE]
    if below:
        print(f"\nbelow {REQUIRED_SCORE:.0%}: {', '.join(below)}")
        return 1
    return 0


def write_scores(path: Path, scores: list[ModuleScore]) -> None:
    path.write_text(
        json.dumps(
            [
                {
                    "module": score.target,
                    "score": round(score.score, 4),
                    "mutants": score.total,
                    "killed": score.killed,
                    "equivalent": len(score.equivalent),
                    "survived": score.survived,
                    "other": score.other,
                    "seconds": round(score.seconds, 1),
                }
                for score in scores
            ],
            indent=2,
        )
    )


def _prefix(target: str) -> str:
    """The start of the mutant names of a target: its dotted module path."""
    return target.removesuffix(".py").replace("/", ".")


if __name__ == "__main__":
    sys.exit(main())
