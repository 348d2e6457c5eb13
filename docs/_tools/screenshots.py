"""Build the site and take screenshots of pages with headless Chromium (Debian's
``chromium``), to look at before calling a change to the docs done.

    python docs/_tools/screenshots.py [PAGE ...]   # default: index howto/redis

Writes ``docs/_build/screenshots/<page>.png`` and prints each path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
BUILD = DOCS / "_build"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", default=["index", "howto/redis"])
    parser.add_argument("--size", default="1280,1800", help="window WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                    str(DOCS), str(BUILD / "html")], check=True)
    (BUILD / "screenshots").mkdir(parents=True, exist_ok=True)
    for page in args.pages:
        out = BUILD / "screenshots" / (page.replace("/", "-") + ".png")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={args.size}",
                        f"--screenshot={out}", (BUILD / "html" / f"{page}.html").as_uri()],
                       check=True, capture_output=True, timeout=120)
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
