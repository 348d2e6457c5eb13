"""docs/howto/testing.rst, as printed: each example test file is written into a fresh folder
and run by pytest in another process, with the refresher plugin as installed (its fixtures,
no conftest); the command-line emulator is started as printed and read as a parent would.
And the page names every fixture the plugin provides."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests
from doc_blocks import ROOT, doc_block, page_text


def run_pytest(folder: Path, name: str, source: str) -> str:
    """``source`` saved as ``folder/name`` and run by ``python -m pytest`` there; the summary
    line, once the run passed."""
    (folder / name).write_text(source)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "REFRESHER_"))}  # not this run's worker or config
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(folder), "-o", "addopts=", name],
        cwd=folder, env=env, capture_output=True, text=True, timeout=180)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary, summary
    return summary


def test_the_bot_example_runs_with_the_plugins_fixture(tmp_path: Path) -> None:
    source = doc_block("docs/howto/testing.rst", "``test_my_bot.py`` and run ``pytest``:")
    assert run_pytest(tmp_path, "test_my_bot.py", source).startswith("1 passed")


def test_the_misbehaving_x_examples_pass(tmp_path: Path) -> None:
    source = doc_block("docs/howto/testing.rst", "or when a user disconnected\nyour app:")
    assert run_pytest(tmp_path, "test_faults.py", source).startswith("2 passed")


def test_the_fake_clock_example_passes(tmp_path: Path) -> None:
    source = doc_block("docs/howto/testing.rst", "moves time for\nboth, at once:")
    assert run_pytest(tmp_path, "test_a_day.py", source).startswith("1 passed")


def test_the_three_token_requests_the_503_example_counts_on(x_emulator) -> None:
    """The page says a refresh tries once and retries twice: three 503s make it fail."""
    import pytest

    from refresher import MemoryTokenStore, RefreshError, RefreshingSession
    from refresher.testing import DEFAULT_CLIENT_ID

    session = RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(),
                                token=x_emulator.issue_token(), token_url=x_emulator.token_url,
                                api_url=x_emulator.api_url)
    x_emulator.fail_token_endpoint(times=3, status=503)
    with pytest.raises(RefreshError):
        session.refresh()
    assert x_emulator.stats.token_requests == 3
    session.close()


def test_a_five_method_store_passes_the_contract(tmp_path: Path) -> None:
    source = doc_block("docs/howto/testing.rst", "the whole contract against your store.")
    summary = run_pytest(tmp_path, "test_my_store.py", source)
    # every check of the contract, but the metadata one: this store keeps none
    assert re.fullmatch(r"\d+ passed, 1 skipped in .*", summary), summary


def test_an_audited_json_store_passes_the_contract(tmp_path: Path) -> None:
    source = doc_block("docs/howto/testing.rst", "The same\ncontract checks the result:")
    summary = run_pytest(tmp_path, "test_audited_store.py", source)
    assert re.fullmatch(r"\d+ passed in .*", summary), summary  # metadata checked too


def test_the_command_line_emulator_prints_its_urls_first_and_stops_on_sigterm() -> None:
    command = doc_block("docs/howto/testing.rst", "from the command line:").strip()
    assert command == "python -m refresher.testing --access-ttl 5"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        shown = json.loads(doc_block("docs/howto/testing.rst", "follows on stderr:"))
        assert info.keys() == shown.keys()
        assert info["token_url"] == info["url"] + "/2/oauth2/token"
        answer = requests.get(info["api_url"] + "/2/users/me", timeout=10)
        assert answer.status_code == 401  # a real X: no token, no answer
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_the_page_names_every_fixture_the_plugin_provides() -> None:
    plugin = ROOT / "refresher" / "testing" / "pytest_plugin.py"
    fixtures = [node.name for node in ast.walk(ast.parse(plugin.read_text()))
                if isinstance(node, ast.FunctionDef)
                and any("fixture" in ast.unparse(d) for d in node.decorator_list)]
    assert fixtures == ["x_emulator", "x_emulator_factory"]
    page = page_text("docs/howto/testing.rst")
    section = page.split("The pytest fixtures\n")[1].split("\n---")[0]
    for name in fixtures:
        assert f"``{name}``\n   " in section, name  # a term of the page's list
