"""The `archdsl` command, run as a user would (subprocesses).

Exit codes: 0 success, 1 spec errors, 2 usage errors; never a Python traceback.
Kept to a few runs: each one starts a fresh interpreter (and torch, for compile/info).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import archdsl

ROOT = Path(__file__).resolve().parent.parent
GOOD = ROOT / "specs" / "transformer.arch"
CORPUS = ROOT / "tests" / "invalid"


def archdsl_cmd() -> list[str]:
    exe = shutil.which("archdsl")
    return [exe] if exe else [sys.executable, "-m", "archdsl.cli.main"]


Proc = subprocess.CompletedProcess[str]


def run(*args: str | Path, cwd: Path | None = None) -> Proc:
    env = {k: v for k, v in os.environ.items() if k != "ARCHDSL_DEBUG"}  # user-facing output
    return subprocess.run(
        [*archdsl_cmd(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd or ROOT,
        env=env,
    )


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def test_check_many_files_reports_every_error(tmp_path: Path) -> None:
    broken_a = CORPUS / "unknown_op.arch"
    broken_b = CORPUS / "shape_mismatch_add.arch"
    proc = run("check", GOOD, broken_a, broken_b)
    assert proc.returncode == 1, proc.stderr
    assert_no_traceback(proc)
    assert f"{GOOD}: ok" in proc.stdout
    # both broken files are reported, each with file:line:col, the line and a caret
    for broken, needle in ((broken_a, "unknown function `rmsnrom`"), (broken_b, "shape mismatch")):
        expect = re.match(r"# expect: (\d+:\d+):", broken.read_text())
        assert expect, broken
        assert f"{broken}:{expect[1]}: error:" in proc.stderr
        assert needle in proc.stderr
    assert "^" in proc.stderr
    assert "1 ok, 2 failed" in proc.stderr


def test_check_good_file_exits_zero() -> None:
    proc = run("check", GOOD)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--no-such-flag", str(GOOD)),
        ("compile", str(GOOD), "--emit", "bogus"),
        ("compile", str(GOOD), "--set", "d_model"),
    ],
    ids=["unknown-flag", "bad-emit", "set-without-value"],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert_no_traceback(proc)
    assert "usage" in proc.stderr.lower() or "error" in proc.stderr.lower()


def test_missing_file_is_a_clear_spec_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.arch"
    proc = run("check", missing)
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert str(missing) in proc.stderr
    assert "not found" in proc.stderr or "No such file" in proc.stderr


EMIT_STAGES = ("ast", "ir", "graph", "plan", "torch")


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Proc]]]:
    """The runs that import torch, started together (each costs seconds of start-up)."""
    out = tmp_path_factory.mktemp("cli")
    (out / "broken").mkdir()
    (out / "good").mkdir()
    jobs: dict[str, tuple[str | Path, ...]] = {
        "compile_broken": ("compile", CORPUS / "unknown_op.arch", "-o", out / "broken" / "pkg"),
        "compile_good": ("compile", GOOD, "-o", out / "good" / "pkg"),
        "info": ("info", GOOD, "--set", "d_model=64", "--context", "128"),
        "set_ir": ("compile", GOOD, "--emit", "ir", "--set", "d_model=64"),
        "set_unknown": ("compile", GOOD, "--emit", "ir", "--set", "d_modle=64"),
        **{f"emit_{s}": ("compile", GOOD, "--emit", s) for s in EMIT_STAGES},
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, *args) for name, args in jobs.items()}
        futures["out"] = pool.submit(lambda: out)  # type: ignore[arg-type, return-value]
        yield futures


def test_compile_broken_spec_leaves_no_directory(slow_runs: dict[str, Future[Proc]]) -> None:
    proc = slow_runs["compile_broken"].result()
    out: Path = slow_runs["out"].result()  # type: ignore[assignment]
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert "unknown function `rmsnrom`" in proc.stderr
    assert not (out / "broken" / "pkg").exists()
    assert list((out / "broken").iterdir()) == []  # no temporary siblings left behind either


def test_compile_writes_the_package(slow_runs: dict[str, Future[Proc]]) -> None:
    proc = slow_runs["compile_good"].result()
    out: Path = slow_runs["out"].result() / "good" / "pkg"  # type: ignore[operator]
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    for name in ("manifest.json", "model.py", "__init__.py", "spec.arch"):
        assert (out / name).is_file(), f"{name} missing; got {sorted(os.listdir(out))}"
    manifest = json.loads((out / "manifest.json").read_text())
    spec = archdsl.load(GOOD)  # in-process, independent of the subprocess
    assert manifest["ir_hash"] == spec.ir_hash()
    assert archdsl.load(out / "spec.arch").ir == spec.ir  # the package's spec round-trips
    compile((out / "model.py").read_text(), str(out / "model.py"), "exec")  # valid Python
    assert str(out) in proc.stdout


def test_emit_stages_print_their_dumps(slow_runs: dict[str, Future[Proc]]) -> None:
    procs = {s: slow_runs[f"emit_{s}"].result() for s in EMIT_STAGES}
    for stage, proc in procs.items():
        assert proc.returncode == 0, (stage, proc.stderr)
        assert_no_traceback(proc)
        assert proc.stdout.strip(), f"--emit {stage} printed nothing"
    assert "transformer" in procs["ast"].stdout and "layer" in procs["ast"].stdout
    ir = json.loads(procs["ir"].stdout)
    assert [b["name"] for b in ir["blocks"]] == ["layer"]
    assert "layer" in procs["graph"].stdout and "d_model" in procs["graph"].stdout
    assert "attn" in procs["plan"].stdout
    compile(procs["torch"].stdout, "<emitted model.py>", "exec")
    assert "torch" in procs["torch"].stdout


def test_set_overrides_a_parameter(slow_runs: dict[str, Future[Proc]]) -> None:
    proc = slow_runs["set_ir"].result()
    assert proc.returncode == 0, proc.stderr
    params = {p["name"]: p["value"] for p in json.loads(proc.stdout)["params"]}
    assert params["d_model"] == 64
    assert params["heads"] == archdsl.load(GOOD).ir.heads  # the others untouched


def test_set_unknown_parameter_is_a_spec_error(slow_runs: dict[str, Future[Proc]]) -> None:
    proc = slow_runs["set_unknown"].result()
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert "d_modle" in proc.stderr and "d_model" in proc.stderr


def test_info_reports_the_overridden_spec(slow_runs: dict[str, Future[Proc]]) -> None:
    proc = slow_runs["info"].result()
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert "transformer" in proc.stdout
    assert "d_model = 64" in proc.stdout
    assert "attn" in proc.stdout
