"""Real processes sharing one JSONTokenStore: no failures, no refresh token spent twice,
about one refresh per token lifetime. The short runs are in the default suite; the soak
runs are opt-in (``pytest -m soak``)."""

from __future__ import annotations

import pytest

from refresher.demo.workload import WorkloadSpec, run_workers, summarize
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

pytestmark = pytest.mark.integration  # spawns processes


def _run(x: XEmulator, store: str, *, processes: int, threads: int, seconds: float,
         shared: bool = True) -> dict:
    spec = WorkloadSpec(store=store, account="shared", client_id=DEFAULT_CLIENT_ID,
                        token_url=x.token_url, api_url=x.api_url, threads=threads,
                        seconds=seconds, shared_store=shared)
    reports = run_workers(spec, processes, seed=x.issue_token())
    result = summarize(reports, x.stats.as_dict(), processes=processes, seconds=seconds,
                       access_ttl=x.access_ttl)
    result["errors"] = [e for r in reports for e in r.errors][:5]
    print(result)
    return result


def _assert_coordinated(result: dict) -> None:
    assert result["failed"] == 0, result["errors"]
    assert result["reused_refresh_tokens"] == 0
    assert result["requests"] > 100
    # ideal 1.0; the leeway makes it ~1.1; never one refresh per process per window
    assert 0.8 <= result["refreshes_per_window"] <= 1.5, result


def test_4_processes_x_3_threads_share_one_json_store_with_1_second_tokens(
        x_emulator_factory, tmp_path):
    x = x_emulator_factory(access_ttl=1.0)
    result = _run(x, str(tmp_path / "tokens.json"), processes=4, threads=3, seconds=5)
    _assert_coordinated(result)


def test_siblings_survive_when_a_refresh_also_kills_the_old_access_token(x_emulator_factory,
                                                                         tmp_path):
    x = x_emulator_factory(access_ttl=1.0, invalidate_access_on_refresh=True)
    result = _run(x, str(tmp_path / "tokens.json"), processes=3, threads=2, seconds=5)
    _assert_coordinated(result)


def test_without_a_shared_store_processes_spend_the_same_refresh_token(x_emulator_factory,
                                                                       tmp_path):
    """The baseline that shows what the shared store buys (and that the check can fail)."""
    x = x_emulator_factory(access_ttl=1.0)
    result = _run(x, str(tmp_path / "unused.json"), processes=3, threads=1, seconds=3,
                  shared=False)
    assert result["reused_refresh_tokens"] > 0
    assert result["failed"] > 0


@pytest.mark.soak
@pytest.mark.integration
def test_soak_8_processes_x_4_threads_for_60_seconds(x_emulator_factory, tmp_path) -> None:
    x = x_emulator_factory(access_ttl=1.0)
    result = _run(x, str(tmp_path / "tokens.json"), processes=8, threads=4, seconds=60)
    _assert_coordinated(result)
