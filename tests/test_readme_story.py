"""The tutorial's story (docs/tutorial/), walked as a newcomer walks it: ``refresher
emulator`` in one process, the lines it prints run in a real shell (bash), the login finished
without a browser by ``curl``, then every command and script of the tutorial's pages, as
printed and in their order, against the one store the emulator named, ending with the logout.
(The file keeps its name from when the story was the README's.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from doc_blocks import doc_block

from refresher import JSONTokenStore
from refresher.testing import DEFAULT_CLIENT_ID
from refresher.testing.net import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent  # the venv's bin: `refresher` and `python`, as installed
ROOT = Path(__file__).resolve().parent.parent


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


def bash(env: dict[str, str], *lines: str, timeout: float = 60,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``lines`` in one bash (in ``cwd``), stopping at the first that fails."""
    return subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def login_with_curl(env: dict[str, str], *lines: str) -> subprocess.CompletedProcess:
    """Run ``lines`` (the last one a ``refresher login``) in bash; when the login prints the
    authorize URL, finish it as the banner says: ``curl -sSL 'URL'`` from another shell."""
    shell = subprocess.Popen(["bash", "-c", "set -e\n" + "\n".join(lines)], env=env,
                             cwd=env["HOME"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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


def test_the_emulators_printed_lines_then_every_tutorial_command_share_one_store(env, emulator):
    exports = [line for line in emulator.printed if line.startswith("export ")]
    assert [line.split("=")[0] for line in exports] == [
        "export REFRESHER_CLIENT_ID", "export REFRESHER_AUTHORIZE_URL",
        "export REFRESHER_TOKEN_URL", "export REFRESHER_REVOKE_URL", "export REFRESHER_API_URL",
        "export REFRESHER_REDIRECT_URI", "export REFRESHER_STORE"]
    assert emulator.printed[len(exports):] == ["refresher login --account alice"]
    assert "curl -sSL 'THE-URL-THE-LOGIN-PRINTS'" in emulator.banner
    store = Path(env["TMPDIR"]) / "refresher-emulator-tokens.json"
    home = Path(env["HOME"])

    def shell(*lines: str) -> subprocess.CompletedProcess:
        """The second shell: the exports, then ``lines``, in the newcomer's home folder."""
        return bash(env, *exports, *lines, cwd=home)

    # first-script.rst: the login the page says to run is the last line the emulator printed.
    assert doc_block("docs/tutorial/first-script.rst", "run the last line the emulator printed:") \
        == emulator.printed[-1] + "\n"
    login = login_with_curl(env, *emulator.printed)  # exactly the printed lines
    assert login.returncode == 0, login.stderr
    assert "No browser could be opened" in login.stderr
    assert f"Saved as account 'alice' in {store}." in login.stdout
    shown = doc_block("docs/tutorial/first-script.rst", "and the login finishes:")
    assert shown.splitlines()[0] in login.stdout  # "Logged in as @emulated_user (...)."

    status = shell(doc_block("docs/tutorial/first-script.rst", "See what was saved"))
    assert status.returncode == 0, status.stderr
    assert f"Store: {store}" in status.stdout
    assert re.search(r"^alice +@emulated_user .* in (2h 00m|1h 59m) ", status.stdout, re.M)

    me = shell(doc_block("docs/tutorial/first-script.rst", "Use the account from Python"))
    assert me.returncode == 0, me.stderr
    assert "'username': 'emulated_user'" in me.stdout

    # README.rst's ten lines: its login line is the emulator's, its script runs as printed.
    assert doc_block("README.rst", "run the lines it prints first") == emulator.printed[-1] + "\n"
    (home / "readme.py").write_text(doc_block("README.rst", "for as long as you like:"))
    readme = shell("python readme.py")
    assert readme.returncode == 0, readme.stderr
    first, second = readme.stdout.splitlines()
    assert re.fullmatch(r"@emulated_user \(\d+\)", first), first
    assert re.fullmatch(r"\d+ calls left in this window", second), second

    # The scopes the sync script needs: a second login, finished by curl too.
    relogin = login_with_curl(env, *exports, doc_block(
        "docs/tutorial/first-script.rst", "asking for every scope the account needs:"))
    assert relogin.returncode == 0, relogin.stderr
    assert "tweet.write" in relogin.stderr  # the link asked for it
    assert "Replaced the account's previous token (not revoked" in relogin.stdout
    (home / "sync.py").write_text(doc_block("docs/tutorial/first-script.rst",
                                            "Save this as ``sync.py``:"))
    synced = shell(doc_block("docs/tutorial/first-script.rst", "and run it:"))
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith("@emulated_user posted tweet ")

    (home / "hooks.py").write_text(doc_block("docs/tutorial/first-script.rst",
                                             "Save this as\n``hooks.py``"))
    hooks = shell("python hooks.py")  # "run it as before", the page says
    assert hooks.returncode == 0, hooks.stderr
    assert re.fullmatch(r"refreshed: the access token now expires at \d+\n", hooks.stdout)

    refresh = shell(doc_block("docs/tutorial/first-script.rst",
                              "From a shell, with the same lock:"))
    assert refresh.returncode == 0, refresh.stderr
    assert "Refreshed account 'alice' (@emulated_user)" in refresh.stdout

    # cron.rst: the job, five overlapping runs and a refresh amid them, then the counters.
    (home / "cron_job.py").write_text(doc_block("docs/tutorial/cron.rst",
                                                "Save this as ``cron_job.py``:"))
    overlap = doc_block("docs/tutorial/cron.rst",
                        "refresh the\naccount by hand while they all run:")
    assert overlap.count("python cron_job.py") == 1 and overlap.rstrip().endswith("wait")
    ran = shell(overlap)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    assert "Refreshed account 'alice' (@emulated_user)" in ran.stdout
    counters = shell(doc_block("docs/tutorial/cron.rst", "Ask the emulator what"))
    assert counters.returncode == 0, counters.stderr
    seen = json.loads(counters.stdout)
    assert seen == emulator.stats()  # the same counters the page reads
    assert seen["api_requests"] >= 5 * 30 and seen["unauthorized"] == 0
    assert seen["reused_refresh_tokens"] == 0

    # notebook.rst, "When you are done": the logout ends the story, and nothing comes after it.
    logout = shell(doc_block("docs/tutorial/notebook.rst", "log ``alice`` out:"))
    assert logout.returncode == 0, logout.stderr
    assert f"Logged out account 'alice' (@emulated_user): revoked at {emulator.url}" \
        in logout.stdout
    assert JSONTokenStore(store).accounts() == []
    assert not (home / ".config").exists()  # the default store: never touched
    stats = emulator.stats()
    assert stats["api_requests"] >= 30 and stats["unauthorized"] == 0
    assert stats["refreshes"] >= 1 and stats["reused_refresh_tokens"] == 0


def test_a_no_browser_login_is_finished_by_curl_too(env, emulator):
    exports = [line for line in emulator.printed if line.startswith("export ")]
    login = login_with_curl(env, *exports, "refresher login --account bob --no-browser")
    assert login.returncode == 0, login.stderr
    assert "Open this address in a browser" in login.stderr
    assert "Saved as account 'bob'" in login.stdout


def test_the_tutorial_shows_the_banner_the_emulator_prints(env):
    running = Emulator(dict(env, TMPDIR="/tmp"))
    try:
        port = running.url.rsplit(":", 1)[1]
        shown = running.banner.replace(f"127.0.0.1:{port}", "127.0.0.1:8000")
    finally:
        running.stop()
    assert doc_block("docs/tutorial/emulator.rst", "stop it with Ctrl-C:") == "refresher emulator\n"
    assert doc_block("docs/tutorial/emulator.rst", "    refresher emulator\n\n") == shown


# -- item 2: the commands for X (the tutorial's last section), true as printed -----------------


def test_the_commands_for_x_run_as_printed(env, emulator, tmp_path):
    browser = tmp_path / "browser"  # a browser: follows the authorize page to the callback
    browser.write_text('#!/bin/sh\nexec curl -sSL "$1" >/dev/null\n')
    browser.chmod(0o755)
    env = dict(env, BROWSER=str(browser))
    exports = [line for line in emulator.printed
               if line.startswith("export ") and "CLIENT_ID" not in line]
    block = doc_block("docs/tutorial/notebook.rst", "X's URLs\n   beside the token")
    for line in block.replace("YOUR_CLIENT_ID", DEFAULT_CLIENT_ID).splitlines():
        ran = bash(env, *exports, line)
        assert ran.returncode == 0, (line, ran.stderr)
    assert "refresher login --client-id YOUR_CLIENT_ID --account alice" in block
    assert emulator.stats()["revocations"] == 2  # the logout revoked both tokens


# -- README.rst: a front page of at most 250 lines whose commands run --------------------------

def test_the_readme_is_a_front_page_whose_links_lead_somewhere() -> None:
    readme = (ROOT / "README.rst").read_text()
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"`[^`<]+<([^>`]+)>`_", readme)
    assert "docs/tutorial/index.rst" in targets and "CHANGELOG.rst" in targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).is_file()]
    assert not missing, missing
    assert "pip install refresher" not in readme and "'refresher[" not in readme


def test_the_readmes_first_commands_are_the_demo_and_what_ci_runs(tmp_path: Path) -> None:
    """Command 2 is the last line of .ci/run, verbatim; command 1's demo, run from this venv
    (the venv and install steps are what .ci/run does before it), succeeds."""
    demo_line, test_line = [line for line in doc_block("README.rst", "no X account or network "
                                                       "needed:").splitlines()
                            if line and not line.startswith("#")]
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()
    assert ci[-1] == test_line
    steps = demo_line.split(" && ")
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -q ."]
    assert steps[2] == ".venv/bin/refresher demo"
    env = _environment(tmp_path)
    result = subprocess.run([str(BIN / "refresher"), "demo"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK: every request succeeded, and no refresh token was spent twice." in result.stdout
