"""examples/quickstart.py, the README's smallest story, runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # spawns processes

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_outlives_several_tokens_without_a_401_or_a_reused_token() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = re.search(r"(\d+) calls as @emulated_user, (\d+) refreshes, (\d+) unauthorized, "
                        r"(\d+) reused", done.stdout)
    assert summary, done.stdout
    calls, refreshes, unauthorized, reused = map(int, summary.groups())
    assert calls > 20 and refreshes >= 2 and unauthorized == 0 and reused == 0
    assert "refreshed, access token sha256:" in done.stderr  # INFO log, fingerprint only
