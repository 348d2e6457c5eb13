"""examples/quickstart.py, the tutorial's smallest story (docs/tutorial/emulator.rst), runs as
printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import ROOT, doc_block

pytestmark = pytest.mark.integration  # spawns processes

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_outlives_several_tokens_without_a_401_or_a_reused_token() -> None:
    command = doc_block("docs/tutorial/emulator.rst", "From the checkout's folder:").split()
    assert command[0] == "python" and ROOT / command[1] == EXAMPLE
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    summary = re.search(r"(\d+) calls as @emulated_user, (\d+) refreshes, (\d+) unauthorized, "
                        r"(\d+) reused", done.stdout)
    assert summary, done.stdout
    calls, refreshes, unauthorized, reused = map(int, summary.groups())
    assert calls > 20 and refreshes >= 2 and unauthorized == 0 and reused == 0
    assert "refreshed, access token sha256:" in done.stderr  # INFO log, fingerprint only
    shown = doc_block("docs/tutorial/emulator.rst", "    python examples/quickstart.py\n\n")
    assert re.search(r"^\d+ calls as @emulated_user, \d+ refreshes, 0 unauthorized, 0 reused$",
                     shown, re.M)  # the page shows the line the example prints
