"""The README's story, walked as a newcomer walks it: ``refresher emulator`` in one process,
the lines it prints run in a real shell (bash), the login finished without a browser by
``curl``, then the README's commands, as printed, against the one store it named.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from refresher import JSONTokenStore
from refresher.testing import DEFAULT_CLIENT_ID
from refresher.testing.net import free_port

pytestmark = pytest.mark.integration

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
BIN = Path(sys.executable).parent  # the venv's bin: `refresher` and `python`, as installed


def readme_block(after: str) -> str:
    """The first literal or code block of the README after the text ``after``, dedented."""
    start = README.index(after) + len(after)
    match = re.search(r"(?:\.\. code-block:: \w+|::)\n\n((?:(?: {4}.*)?\n)+)", README[start:])
    assert match, f"no block after {after!r}"
    return textwrap.dedent(match.group(1)).strip("\n") + "\n"


def _environment(tmp_path: Path) -> dict[str, str]:
    """A newcomer's shell: nothing of refresher's set, a private HOME and TMPDIR, no browser
    (BROWSER=false fails, and no display): the login must be finished by hand."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REFRESHER_", "XDG_", "BROWSER", "DISPLAY", "WAYLAND"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), BROWSER="false",
               PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]), PYTHONUNBUFFERED="1")
    return env


class Emulator:
    """``refresher emulator`` running, and the banner it printed."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            ["refresher", "emulator", "--port", "0", *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("Counters: "):
            line = self.process.stdout.readline()
            assert line, "refresher emulator ended before its banner: " + "".join(lines)
            lines.append(line)
        self.banner = "".join(lines)
        self.url = re.search(r"serving on (http://\S+) ", self.banner)[1]  # type: ignore[index]
        #: The lines to run in another shell, as printed (indented by four spaces).
        self.printed = [line[4:].rstrip("\n") for line in lines if line.startswith("    ")]

    def stats(self) -> dict[str, int]:
        answer: dict[str, int] = requests.get(self.url + "/emulator/stats", timeout=5).json()
        return answer

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return err


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return _environment(tmp_path)


@pytest.fixture
def emulator(env: dict[str, str]) -> Iterator[Emulator]:
    # A callback port of its own (not 8765: another test run may be logging in there).
    running = Emulator(env, "--redirect-uri", f"http://127.0.0.1:{free_port()}/callback")
    yield running
    assert "Traceback" not in running.stop()


def bash(env: dict[str, str], *lines: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``lines`` in one bash, stopping at the first that fails."""
    return subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def login_with_curl(env: dict[str, str], *lines: str) -> subprocess.CompletedProcess:
    """Run ``lines`` (the last one a ``refresher login``) in bash; when the login prints the
    authorize URL, finish it as the banner says: ``curl -sSL 'URL'`` from another shell."""
    shell = subprocess.Popen(["bash", "-c", "set -e\n" + "\n".join(lines)], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert shell.stderr is not None
        url, seen = "", ""
        while not url:
            line = shell.stderr.readline()
            assert line, f"the login ended before printing the authorize URL: {seen}"
            seen += line
            url = next((w for w in line.split() if "/i/oauth2/authorize?" in w), "")
        page = bash(env, f"curl -sSL {shlex.quote(url)}")
        assert page.returncode == 0 and "Logged in" in page.stdout, page
        out, err = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    return subprocess.CompletedProcess(shell.args, shell.returncode, out, seen + err)


# -- items 1 and 3: the printed lines, the login without a browser, then every command --------


def test_the_emulators_printed_lines_then_every_readme_command_share_one_store(env, emulator):
    exports = [line for line in emulator.printed if line.startswith("export ")]
    assert [line.split("=")[0] for line in exports] == [
        "export REFRESHER_CLIENT_ID", "export REFRESHER_AUTHORIZE_URL",
        "export REFRESHER_TOKEN_URL", "export REFRESHER_REVOKE_URL", "export REFRESHER_API_URL",
        "export REFRESHER_REDIRECT_URI", "export REFRESHER_STORE"]
    assert emulator.printed[len(exports):] == ["refresher login --account alice"]
    assert "curl -sSL 'THE-URL-THE-LOGIN-PRINTS'" in emulator.banner
    store = Path(env["TMPDIR"]) / "refresher-emulator-tokens.json"

    login = login_with_curl(env, *emulator.printed)  # exactly the printed lines
    assert login.returncode == 0, login.stderr
    assert "No browser could be opened" in login.stderr
    assert f"Saved as account 'alice' in {store}." in login.stdout

    # The cron recipe's job, run from that shell: it finds the account by the exports alone.
    cron_job = Path(env["HOME"]) / "cron_job.py"
    cron_job.write_text(readme_block("cd /srv/bot && .venv/bin/python cron_job.py\n"))
    ran = bash(env, *exports, f"python {cron_job}")
    assert ran.returncode == 0, ran.stderr

    done = {}
    for line in readme_block("in the same shell, every command and recipe below").splitlines():
        done[line.split("#")[0].strip()] = ran = bash(env, *exports, line)
        assert ran.returncode == 0, (line, ran.stderr)
    status, refresh, me, logout = done.values()
    assert f"Store: {store}" in status.stdout
    assert re.search(r"^alice +@emulated_user .* in (2h 00m|1h 59m) ", status.stdout, re.M)
    assert "Refreshed account 'alice' (@emulated_user)" in refresh.stdout
    assert "'username': 'emulated_user'" in me.stdout
    assert f"Logged out account 'alice' (@emulated_user): revoked at {emulator.url}" \
        in logout.stdout
    assert JSONTokenStore(store).accounts() == []
    assert not (Path(env["HOME"]) / ".config").exists()  # the default store: never touched
    stats = emulator.stats()
    assert stats["api_requests"] >= 30 and stats["unauthorized"] == 0
    assert stats["refreshes"] >= 1 and stats["reused_refresh_tokens"] == 0


def test_a_no_browser_login_is_finished_by_curl_too(env, emulator):
    exports = [line for line in emulator.printed if line.startswith("export ")]
    login = login_with_curl(env, *exports, "refresher login --account bob --no-browser")
    assert login.returncode == 0, login.stderr
    assert "Open this address in a browser" in login.stderr
    assert "Saved as account 'bob'" in login.stdout


def test_the_readme_shows_the_banner_the_emulator_prints(env):
    running = Emulator(dict(env, TMPDIR="/tmp"))
    try:
        port = running.url.rsplit(":", 1)[1]
        shown = running.banner.replace(f"127.0.0.1:{port}", "127.0.0.1:8000")
    finally:
        running.stop()
    assert readme_block("prints what points\nrefresher at it") == "refresher emulator\n"
    assert readme_block("    refresher emulator\n\n") == shown


# -- item 2: the Command line section's commands, true as printed ------------------------------


def test_the_command_line_sections_commands_run_as_printed(env, emulator, tmp_path):
    browser = tmp_path / "browser"  # a browser: follows the authorize page to the callback
    browser.write_text('#!/bin/sh\nexec curl -sSL "$1" >/dev/null\n')
    browser.chmod(0o755)
    env = dict(env, BROWSER=str(browser))
    exports = [line for line in emulator.printed
               if line.startswith("export ") and "CLIENT_ID" not in line]
    block = readme_block("so the\nother commands need none of them repeated:")
    for line in block.replace("YOUR_CLIENT_ID", DEFAULT_CLIENT_ID).splitlines():
        ran = bash(env, *exports, line)
        assert ran.returncode == 0, (line, ran.stderr)
    assert "refresher login --client-id YOUR_CLIENT_ID --account alice" in block
    assert emulator.stats()["revocations"] == 2  # the logout revoked both tokens
