"""Drop-in: RefreshingSession built with only OAuth2Session's arguments passes
requests-oauthlib's own OAuth2Session test suite.

The suite ships in requests-oauthlib's source distribution, fetched from the package index
at test time for the installed version (never committed here). Without access to the index
the test is skipped, except in CI, where it must run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

import pytest

pytestmark = pytest.mark.integration  # spawns processes


def _fetch_suite(folder: Path, missing: Callable[[str], NoReturn]) -> Path:
    wanted = version("requests-oauthlib")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"requests-oauthlib=={wanted}", "-d", str(folder)],
        capture_output=True, text=True, timeout=180,
    )
    archives = list(folder.glob("requests*oauthlib-*.tar.gz"))
    if done.returncode != 0 or not archives:
        message = f"cannot fetch requests-oauthlib {wanted} sources: {done.stderr[-300:]}"
        missing(message)
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers()
                      if m.name.endswith("tests/test_oauth2_session.py"))
        source = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
    patched, count = re.subn(
        r"^from requests_oauthlib import OAuth2Session, TokenUpdated$",
        "from requests_oauthlib import TokenUpdated\n"
        "from refresher import RefreshingSession as OAuth2Session",
        source, flags=re.M)
    assert count == 1, "the suite's import line changed; update this test"
    target = folder / "test_upstream_oauth2_session.py"
    target.write_text(patched)
    return target


def test_refreshing_session_passes_oauth2sessions_own_tests(tmp_path, missing) -> None:
    suite = _fetch_suite(tmp_path, missing)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:refresher",
         "--rootdir", str(tmp_path), "-o", "addopts=", str(suite)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", summary) and "failed" not in summary, summary
