"""Smoke tests of benchmarks/crash.py: a few kill -9 trials run, exit 0, and report their
counts. Only what atomic writes guarantee is asserted on (no torn file); lost pairs and
reused refresh tokens are measurements, not pass/fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import crash  # noqa: E402

pytestmark = pytest.mark.integration  # spawns processes


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("OAUTHLIB_INSECURE_TRANSPORT", None)
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "crash.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_crash_explains_itself() -> None:
    out = _run("--help").stdout
    assert out.startswith("usage:")
    for option in ("--trials", "--json", "--seed", "--max-seconds"):
        assert option in out
    assert "--role" not in out  # the children's options stay hidden


def test_five_kills_leave_no_torn_file_and_report_every_count() -> None:
    document = json.loads(_run("--trials", "5", "--seed", "7", "--json").stdout)
    for key in ("trials", "torn_files", "lost_pairs", "reused_refresh_tokens",
                "leftover_temp_files", "total_seconds", "failed_survivor_requests",
                "reseeds", "phases", "samples"):
        assert key in document, key
    assert document["trials"] == 5
    assert document["torn_files"] == 0
    assert document["stopped_early"] is False
    assert document["child_errors"] == 0, document["samples"]
    assert len(document["samples"]) == 5
    assert sum(phase["kills"] for phase in document["phases"].values()) == 5
    assert 0 <= document["lost_pairs"] <= 5
    assert document["reseeds"] <= document["lost_pairs"]
    assert document["survivor_requests"] == 5 * 2 * 2  # 2 survivors, 2 requests each
    assert document["total_seconds"] > 0


def test_plain_text_report() -> None:
    out = _run("--trials", "2", "--survivors", "1").stdout
    assert out.startswith("crash: kill -9 during refreshes of a JSONTokenStore")
    for label in ("trials", "torn files", "lost pairs", "reused refresh tokens",
                  "leftover temp files seen", "total time"):
        assert any(line.startswith(label + " ") for line in out.splitlines()), label
    assert any(line.startswith("trials ") and line.split()[-1] == "2"
               for line in out.splitlines())


def test_the_phase_of_a_kill_is_the_last_marker_seen() -> None:
    def markers(names: str) -> list[tuple[float, str, str]]:
        return [(float(i), name, "") for i, name in enumerate(names)]

    assert crash.classify(markers("WRBCASDB")) == crash.BEFORE
    assert crash.classify(markers("WRBCASDBC")) == crash.TOKEN
    assert crash.classify(markers("WRBCASDBCA")) == crash.SAVE
    assert crash.classify(markers("WRBCASDBCAS")) == crash.SAVE
    assert crash.classify(markers("WRBE")) == crash.FAILED
    assert crash.classify(markers("W")) == crash.BEFORE


def test_phase_lengths_leave_the_first_refresh_out() -> None:
    timeline = [(0.0, "B", ""), (1.0, "C", ""), (9.0, "A", ""), (9.5, "S", ""),
                (12.0, "D", ""), (12.0, "B", ""), (12.5, "C", ""), (14.5, "A", ""),
                (14.6, "S", ""), (15.5, "D", ""), (15.5, "B", "")]
    lengths = crash.phase_lengths(timeline)
    assert lengths[crash.BEFORE] == [0.5]
    assert lengths[crash.TOKEN] == [2.0]
    assert lengths[crash.SAVE] == [1.0]
