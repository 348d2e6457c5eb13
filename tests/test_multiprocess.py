"""Real processes sharing one JSONTokenStore: no failures, no refresh token spent twice,
never more than one refresh per token lifetime. The short runs are in the default suite;
the soak runs are opt-in (``pytest -m soak``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration  # spawns processes


def test_4_processes_x_3_threads_share_one_json_store_with_1_second_tokens(
        x_emulator_factory, tmp_path, workload):
    x = x_emulator_factory(access_ttl=1.0)
    result = workload.run(x, str(tmp_path / "tokens.json"), processes=4, threads=3, seconds=3)
    workload.assert_coordinated(result)


def test_siblings_survive_when_a_refresh_also_kills_the_old_access_token(x_emulator_factory,
                                                                         tmp_path, workload):
    x = x_emulator_factory(access_ttl=1.0, invalidate_access_on_refresh=True)
    result = workload.run(x, str(tmp_path / "tokens.json"), processes=3, threads=2, seconds=3)
    workload.assert_coordinated(result)


def test_without_a_shared_store_processes_spend_the_same_refresh_token(x_emulator_factory,
                                                                       tmp_path, workload):
    """The baseline that shows what the shared store buys (and that the check can fail).

    Not a matter of timing: the seed has expired when the workers start, so each process's
    first request refreshes its own copy of it, and all but the first spend a spent token."""
    x = x_emulator_factory(access_ttl=1.0)
    result = workload.run(x, str(tmp_path / "unused.json"), processes=3, threads=1, seconds=3,
                          shared_store=False)
    assert all(n > 0 for n in result["requests_per_process"]), result
    assert result["reused_refresh_tokens"] >= 2
    assert result["failed"] > 0


@pytest.mark.soak
@pytest.mark.integration
def test_soak_8_processes_x_4_threads_for_60_seconds(x_emulator_factory, tmp_path,
                                                      workload) -> None:
    x = x_emulator_factory(access_ttl=1.0)
    result = workload.run(x, str(tmp_path / "tokens.json"), processes=8, threads=4,
                          seconds=60)
    workload.assert_coordinated(result)
