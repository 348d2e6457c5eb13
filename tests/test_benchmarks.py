"""Smoke tests of the benchmark scripts: each runs with tiny parameters, exits 0, and prints
its table. No assertion is about speed; the numbers are checked for shape and for the
counts that do not depend on the machine (reused refresh tokens, failures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402
import contention  # noqa: E402

pytestmark = pytest.mark.integration  # spawns processes


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("OAUTHLIB_INSECURE_TRANSPORT", None)
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _header(output: str, first_column: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(first_column):
            return line.split("  ")
    raise AssertionError(f"no table header starting with {first_column!r} in:\n{output}")


# -- the scripts ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["overhead.py", "contention.py", "startup.py",
                                    "accounts.py", "encryption.py", "refresh_window.py"])
def test_every_script_explains_itself(script: str) -> None:
    out = _run(script, "--help").stdout
    assert out.startswith("usage:")
    assert "--json" in out


def test_overhead_prints_four_clients_with_ratios() -> None:
    out = _run("overhead.py", "--requests", "50", "--rounds", "2", "--warmup", "5").stdout
    header = " ".join(_header(out, "client"))
    for column in ("us/request", "vs OAuth2Session", "vs floor", "CPU us/request"):
        assert column in header
    for client in ("requests.Session", "OAuth2Session", "RefreshingSession+memory",
                   "RefreshingSession+json"):
        assert any(line.startswith(client + " ") for line in out.splitlines()), client
    assert "Goal: RefreshingSession+json within 5 % of OAuth2Session" in out


def test_overhead_json_has_a_ratio_of_one_for_each_baseline_against_itself() -> None:
    out = _run("overhead.py", "--requests", "40", "--rounds", "2", "--warmup", "5",
               "--json").stdout
    document = json.loads(out)
    rows = {row["client"]: row for row in document["rows"]}
    assert rows["OAuth2Session"]["vs OAuth2Session"] == 1.0
    assert rows["requests.Session"]["vs floor"] == 1.0
    assert len(document["wall_us_per_round"]["RefreshingSession+json"]) == 2
    assert all(row["us/request"] > 0 for row in rows.values())


def test_overhead_profile_names_refresher_on_the_hot_path() -> None:
    out = _run("overhead.py", "--profile", "RefreshingSession+json", "--requests", "30",
               "--warmup", "5", "--top", "60").stdout
    assert "refresher/session.py" in out.replace(os.sep, "/")
    assert "token_for_request" in out


@pytest.mark.parametrize("stores", [
    "json,memory",
    pytest.param("json,sqlite,redis,memory", marks=pytest.mark.soak),
])
def test_contention_rows_show_what_the_shared_store_buys(stores: str) -> None:
    """The shared rows against the per-process baseline (the SQL and Redis rows under
    ``-m soak``: their stores' own multi-process tests run by default)."""
    out = _run("contention.py", "-P", "2", "-T", "2", "--ttl", "1", "--seconds", "2",
               "--runs", "1", "--stores", stores, "--json", timeout=180).stdout
    document = json.loads(out)
    results: dict[str, dict[str, Any]] = {r["store"]: r for r in document["results"]}
    for column in ("requests", "failed", "refreshes", "windows", "per window", "reused RT",
                   "p50 ms", "p99 ms", "in-window p50", "in-window p99", "outside p99",
                   "in/out p99", "token RTT ms"):
        assert column in document["columns"]

    shared = ["json file"]
    for label, why in (("sqlite", _common.sql_unavailable()),
                       ("redis", _common.redis_unavailable())):
        if label not in stores:
            continue
        if why is None:
            shared.append(label)
        else:
            assert any(note.startswith(f"{label} row skipped:") for note in document["notes"])
    for store in shared:
        row = results[store]
        assert row["requests"] > 0
        assert row["failed"] == 0, row["errors"]
        assert row["reused_refresh_tokens"] == 0
        assert row["refreshes"] >= 1
        assert row["refresh_spans"] == row["refreshes"]  # the probe's are not counted

    baseline = results["memory per process"]
    assert baseline["reused_refresh_tokens"] > 0
    assert baseline["failed"] > 0


def test_contention_sidecar_row_refreshes_in_a_process_of_its_own() -> None:
    out = _run("contention.py", "-P", "1", "-T", "2", "--ttl", "1", "--seconds", "2.5",
               "--runs", "1", "--stores", "json,memory", "--sidecar", "--json",
               timeout=180).stdout
    document = json.loads(out)
    results: dict[str, dict[str, Any]] = {r["store"]: r for r in document["results"]}
    assert list(results) == ["json file", "json file, sidecar", "memory per process"]
    row = results["json file, sidecar"]
    assert row["failed"] == 0 and row["reused_refresh_tokens"] == 0, row["errors"]
    # a store of its own (not the json row's), and the sidecar made the refreshes
    assert row["sidecar_refreshes"] >= 1 and row["refreshes"] >= row["sidecar_refreshes"]
    assert row["refresh_spans"] >= row["sidecar_refreshes"]  # its refreshes are windows
    assert "memory per process: no sidecar row (nothing shared to adopt from)." in \
        document["notes"]


def test_contention_table_in_plain_text() -> None:
    out = _run("contention.py", "-P", "1", "-T", "1", "--ttl", "1", "--seconds", "1",
               "--runs", "1", "--stores", "json", timeout=120).stdout
    assert out.startswith("contention: processes x threads sharing one token")
    assert any(line.startswith("json file ") for line in out.splitlines())
    assert "Goal (json file)" in out


@pytest.mark.parametrize("with_postgres", [False, pytest.param(True, marks=pytest.mark.soak)])
def test_contention_pools_the_runs_of_a_row_and_judges_the_ratio(with_postgres: bool) -> None:
    postgres = with_postgres and _common.postgres_unavailable() is None
    stores = "json,postgres" if postgres else "json"
    out = _run("contention.py", "-P", "2", "-T", "2", "--ttl", "1", "--seconds", "1.5",
               "--runs", "2", "--stores", stores, "--json", timeout=180).stdout
    document = json.loads(out)
    results: dict[str, dict[str, Any]] = {r["store"]: r for r in document["results"]}
    assert set(results) == {"json file"} | ({"postgresql"} if "postgres" in stores else set())
    for store, row in results.items():
        assert row["runs"] == 2 and len(row["per_run"]) == 2
        assert row["failed"] == 0, row["errors"]
        assert row["reused_refresh_tokens"] == 0
        assert row["refresh_spans"] == row["refreshes"] >= 2  # at least one a run
        # pooled: the row's in-window requests are those of its runs together
        assert row["in_window_requests"] == sum(r["in_window_requests"]
                                                for r in row["per_run"])
        assert any(note.startswith(f"Target ({store}): in-window p99") for note in
                   document["notes"])
        assert isinstance(row["ratio_target_met"], bool)
        assert "placebo_in_out_p99_ratio" in row
        assert any(f"Target ({store}):" in note and "placebo windows" in note
                   for note in document["notes"])
        if row["in_out_p99_ratio"] is not None:
            assert row["in_out_p99_ratio"] == pytest.approx(
                row["in_window_p99_ms"] / row["outside_window_p99_ms"])
    if with_postgres and not postgres:  # the row says why it cannot run, the rest goes on
        out = _run("contention.py", "--stores", "postgres", "--seconds", "1", "--runs",
                   "1").stdout
        assert "postgresql row skipped: " in out


def test_contention_refuses_an_unknown_store() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "contention.py"), "--stores",
                             "json,oracle"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown stores: oracle" in result.stderr


def test_accounts_quick_run_measures_every_store_it_can() -> None:
    out = _run("accounts.py", "--quick", "--stores", "json,sqlite,redis", "--json",
               timeout=120).stdout
    document = json.loads(out)
    for column in ("store", "accounts", "load ms", "save ms", "refresh ms", "N",
                   "N threads ms", "threads x", "N procs ms", "procs x"):
        assert column in document["columns"]
    results: dict[str, dict[str, Any]] = {r["store"]: r for r in document["results"]}
    skipped: dict[str, str] = {r["store"]: r["skipped"] for r in document["skipped"]}
    expected = {"json file": None, "sqlite": _common.sql_unavailable(),
                "redis": _common.redis_unavailable()}
    for store, why in expected.items():
        if why is not None:
            assert skipped[store] == why
            assert any(row.get("note") == f"skipped: {why}" for row in document["rows"])
            continue
        row = results[store]
        assert row["accounts"] == 10 and row["parallel"] == 4
        assert row["failed_refreshes"] == 0, row["errors"]
        assert row["reused_refresh_tokens"] == 0
        # 3 one at a time, 1 slow, 2 rounds of 4 by threads, 2 of 4 by processes (each
        # series after one untimed refresh of its own)
        assert row["refreshes_at_emulator"] == (1 + 3) + (1 + 1) + 2 * 4 + 2 * 4
        for key in ("load_ms", "save_ms", "refresh_ms", "one_slow_refresh_ms", "threads_ms",
                    "processes_ms", "threads_ratio", "processes_ratio"):
            assert row[key] > 0, key
        assert len(row["samples_ms"]["load"]) == 3
        assert isinstance(row["target_met"], bool)


def test_accounts_table_in_plain_text_with_a_bigger_store() -> None:
    out = _run("accounts.py", "--quick", "--stores", "json", "--sizes", "10,200",
               timeout=120).stdout
    assert out.startswith("accounts: many accounts in one store")
    lines = out.splitlines()
    assert _header(out, "store")[-1].strip() == "<= 3x"
    assert any(line.startswith("json file ") and " 200 " in line for line in lines)
    assert any(line.startswith("Target: N at once within 3x") for line in lines)


def test_accounts_refuses_an_unknown_store() -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / "accounts.py"), "--stores",
                             "json,oracle"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown stores: oracle" in result.stderr


def test_startup_compares_the_imports_and_checks_the_lazy_parts() -> None:
    out = _run("startup.py", "--runs", "2", "--json").stdout
    document = json.loads(out)
    statements = [row["statement"] for row in document["rows"]]
    assert statements == ["python -c pass", "import requests_oauthlib", "import refresher"]
    assert document["lazy_parts_loaded"] == []
    assert len(document["samples_ms"]["import refresher"]) == 2


def test_startup_explain_lists_modules_refresher_adds() -> None:
    out = _run("startup.py", "--explain", "--top", "50").stdout
    assert "refresher.coordinator" in out
    assert "requests.sessions" not in out  # loaded by both: not refresher's cost


# -- the arithmetic behind the tables -------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert _common.percentile(values, 50) == 50
    assert _common.percentile(values, 99) == 99
    assert _common.percentile([7.0], 99) == 7.0


def test_refreshes_less_than_half_a_lifetime_apart_are_one_window() -> None:
    spans = [(10.0, 10.01), (10.2, 10.21), (11.0, 11.01), (12.0, 12.01), (12.1, 12.1)]
    assert contention.expiry_windows(spans, ttl=1.0) == 3
    assert contention.expiry_windows([], ttl=1.0) == 0


def test_a_request_is_in_a_refresh_window_when_it_overlaps_one() -> None:
    merged = contention.merge_spans([(5.0, 6.0), (1.0, 2.0), (1.5, 3.0)])
    assert merged == [(1.0, 3.0), (5.0, 6.0)]
    starts = [start for start, _ in merged]
    assert contention.overlaps(merged, starts, 0.5, 1.0)      # ends as a refresh starts
    assert contention.overlaps(merged, starts, 2.9, 4.0)      # starts before it ends
    assert contention.overlaps(merged, starts, 5.2, 5.3)      # inside
    assert not contention.overlaps(merged, starts, 3.1, 4.9)  # between two
    assert not contention.overlaps(merged, starts, 0.0, 0.9)  # before all
    assert not contention.overlaps(merged, starts, 6.1, 7.0)  # after all


def test_table_aligns_columns() -> None:
    table = _common.format_table(["name", "value"], [["a", 1.0], ["longer", None]])
    lines = table.splitlines()
    assert lines[0] == "name    value"
    assert lines[2] == "a        1.00"
    assert lines[3] == "longer      -"


def test_a_short_row_ends_in_a_note_that_spans_the_other_columns() -> None:
    columns = ["store", "accounts", "load ms", "save ms"]
    table = _common.format_table(columns, [["json", 10, 1.0, 2.0],
                                           ["postgresql", None, "skipped: no binaries"]])
    lines = table.splitlines()
    assert lines[0] == "store       accounts  load ms  save ms"
    assert lines[2] == "json              10     1.00     2.00"
    assert lines[3] == "postgresql         -  skipped: no binaries"
    assert _common._row_object(columns, ["postgresql", None, "skipped: no binaries"]) == {
        "store": "postgresql", "accounts": None, "note": "skipped: no binaries"}


def test_contention_has_an_async_row() -> None:
    out = _run("contention.py", "-P", "2", "-T", "2", "--ttl", "1", "--seconds", "1.5",
               "--runs", "1", "--stores", "json-async", "--json", timeout=120).stdout
    document = json.loads(out)
    results: dict[str, dict[str, Any]] = {r["store"]: r for r in document["results"]}
    row = results["json file, async"]  # httpx is in the test extra
    assert row["requests"] > 0 and row["failed"] == 0, row["errors"]
    assert row["reused_refresh_tokens"] == 0 and row["refreshes"] >= 1


def test_refresh_window_rows_for_each_way_of_making_the_token_request() -> None:
    out = _run("refresh_window.py", "--seconds", "1.5", "--every", "0.1", "--runs", "1",
               "--json", timeout=120).stdout
    document = json.loads(out)
    rows = {row["token requests from"]: row for row in document["rows"]}
    assert list(rows) == ["refresher", "bare POST", "other process", "busy thread",
                          "coordinator", "background"]
    for row in rows.values():  # requests ran beside the token requests
        assert row["outside reqs"] > 0 and row["out p50 ms"] > 0
    # ~10 token requests of a few ms each beside ~80 requests a second per thread: some
    # requests overlap them (the split works), though maybe not in every row of so short a run
    assert sum(row["in-window reqs"] for row in rows.values()) > 0


def test_encryption_prints_plain_and_encrypted_for_each_store() -> None:
    document = json.loads(_run("encryption.py", "--quick", "--json").stdout)
    assert document["columns"] == ["store", "operation", "plain us", "encrypted us", "x", "+us"]
    rows = [row for row in document["rows"] if "plain us" in row]
    assert {(row["store"], row["operation"]) for row in rows} >= {
        ("memory", "load"), ("memory", "save"), ("json file", "load"), ("json file", "save")}
    for row in rows:
        assert row["plain us"] > 0 and row["encrypted us"] > 0 and row["x"] > 0


def test_many_users_measures_each_client_in_its_own_process() -> None:
    out = _run("many_users.py", "--users", "20", "--json", timeout=300).stdout
    document = json.loads(out)
    rows = {row["client"]: row for row in document["rows"]}
    assert set(rows) == {"refresher", "authlib", "requests-oauthlib"}
    mine = rows["refresher"]
    assert mine["refreshes"] == 20 and mine["threads"] <= 1 + 4 + 8  # bounded pools
    assert mine["RSS MB"] is not None and mine["fds"] >= 20  # a connection per user
    assert not [n for n in document["notes"] if "only" in n]  # every request answered 200
    if rows["authlib"]["RSS MB"] is None:  # not installed: skipped, and said why
        assert any(note.startswith("authlib skipped:") for note in document["notes"])
