"""Packaging, and docs/tutorial/install.rst run as printed: an editable install from a
checkout, a wheel built and installed with an extra into a fresh virtual environment, the
extras table against setup.cfg, and what the source distribution carries.

Each run works on a copy of the checkout in the test's folder (the checkout itself is left
alone). The fresh environments see the test's own site-packages through a ``.pth`` file
(as ``--system-site-packages`` would), so refresher's dependencies are already there and
the wheel installs with ``PIP_NO_INDEX``: nothing is downloaded but what pip's isolated
build of the checkout asks for (setuptools and wheel, from the configured index or pip's
cache).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from doc_blocks import doc_block

import refresher

ROOT = Path(__file__).resolve().parent.parent
PAGE = "docs/tutorial/install.rst"
WHEEL = f"refresher-{refresher.__version__}-py3-none-any.whl"

# What a checkout holds that a copy of it must not (the test's venv, caches, builds).
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist",
                                     "_build", "__pycache__", ".*_cache", "*.pyc")


def _copy_of_the_checkout(where: Path) -> Path:
    source = where / "refresher-src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    return source


def _environment(**env: str) -> dict[str, str]:
    """A user's environment: nothing of refresher's, no PYTHONPATH or active venv, this
    interpreter's ``bin`` first on PATH (so ``python3`` is this Python)."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("REFRESHER_", "VIRTUAL_ENV", "PYTHON"))}
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                           environment.get("PATH", "")])
    environment.update(env)
    return environment


def _sh(script: str, cwd: Path, **env: str) -> str:
    """Run ``script`` with sh, as a user's shell would (see :func:`_environment`). Returns
    its output; fails on an error."""
    done = subprocess.run(["sh", "-ec", script], cwd=cwd, env=_environment(**env), text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _lend_dependencies(venv: Path) -> None:
    """The test's site-packages, visible from ``venv`` after its own (a path in a .pth file:
    the packages there, not the .pth files, so not the test's editable refresher)."""
    purelib = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages" / "zz-test-dependencies.pth").write_text(
        purelib + "\n")


def _python(venv: Path, code: str, cwd: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, text=True,
                          env=_environment(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.integration
def test_the_install_page_from_a_checkout_to_a_wheel_in_another_venv(tmp_path) -> None:
    source = _copy_of_the_checkout(tmp_path)
    make_venv = doc_block("docs/tutorial/install.rst", "Make a virtual environment and activate")
    install = doc_block("docs/tutorial/install.rst", "with the extras you need in brackets:")
    build = doc_block("docs/tutorial/install.rst", "build a wheel once:")
    install_wheel = doc_block("docs/tutorial/install.rst", "and install it there with its extras")
    check = doc_block("docs/tutorial/install.rst", "Check the install\n-----------------")
    assert install == "pip install -e '.[redis]'\n"
    assert install_wheel == f"pip install 'dist/{WHEEL}[redis]'\n"

    # From a checkout: the venv, then the editable install with the redis extra.
    _sh(make_venv, source)
    _lend_dependencies(source / ".venv")
    _sh(". .venv/bin/activate\n" + install, source)
    where = _python(source / ".venv", "import redis, refresher; print(refresher.__file__)",
                    tmp_path)
    assert where.strip() == str(source / "refresher" / "__init__.py")  # editable: the checkout

    # A wheel, built in the checkout's venv, installed with the extra into another venv.
    _sh(". .venv/bin/activate\n" + build, source)
    assert [p.name for p in (source / "dist").iterdir()] == [WHEEL]
    other = tmp_path / "elsewhere"
    _sh(f"python3 -m venv {other}", tmp_path)
    _lend_dependencies(other)
    _sh(f". {other}/bin/activate\n" + install_wheel, source, PIP_NO_INDEX="1")
    shown = _python(other, "import importlib.metadata as m, redis, refresher\n"
                           "print(refresher.__file__)\n"
                           "print(m.distribution('refresher').read_text('direct_url.json'))",
                    tmp_path)
    installed, direct_url = shown.splitlines()[:2]
    assert installed.startswith(str(other)) and installed.endswith("refresher/__init__.py")
    assert f"dist/{WHEEL}" in direct_url
    assert _sh(f". {other}/bin/activate\n" + check, tmp_path) == (
        f"refresher {refresher.__version__}\n")
    shown = doc_block("docs/tutorial/install.rst", "refresher --version\n")
    assert shown == f"refresher {refresher.__version__}\n"


def _extras_table() -> dict[str, str]:
    """The extras table of the page: extra -> its "installs" cell (rows joined)."""
    page = (ROOT / PAGE).read_text()
    table = page[page.index("extra      installs"):]
    rows: dict[str, str] = {}
    last = ""
    for line in table.splitlines()[2:]:
        if line.startswith("="):
            break
        name, installs = line[:9].strip(), line[11:52].strip()
        if name:
            last = name
            rows[name] = installs
        else:
            rows[last] = f"{rows[last]} {installs}".strip()
    return rows


def _extras() -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {name: value.split() for name, value in config["options.extras_require"].items()}


def test_the_extras_table_is_setup_cfg_s() -> None:
    table, extras = _extras_table(), _extras()
    assert list(table) == list(extras)
    for name in ("redis", "sql", "httpx", "aiohttp", "crypto", "keyring"):
        assert [r.strip() for r in table[name].split(",")] == extras[name], name
    for name in ("test", "docs", "dev"):
        named = re.findall(r"[A-Za-z][\w-]*", table[name])
        for requirement in named:
            if requirement not in ("the", "libraries", "above"):
                assert any(r.lower().startswith(requirement.lower())
                           for r in extras[name]), (name, requirement)


def test_the_missing_extra_message_is_the_one_the_page_shows(tmp_path) -> None:
    shown = doc_block("docs/tutorial/install.rst", "Opening a SQL store without SQLAlchemy")
    code = ("import sys\n"
            "sys.modules['sqlalchemy'] = None\n"
            "import refresher\n"
            "try:\n"
            "    refresher.open_store(sys.argv[1])\n"
            "except refresher.MissingExtra as exc:\n"
            "    print(f'{type(exc).__module__}.{type(exc).__name__}: {exc}')\n")
    done = subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path / 't.db'}"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == shown, done.stderr


# -- the source distribution -----------------------------------------------------------------

@pytest.mark.integration
def test_the_sdist_carries_examples_benchmarks_changelog_docs_and_tests(tmp_path) -> None:
    """Built by setuptools itself (no isolated build, no network) from a copy of the
    checkout."""
    source = _copy_of_the_checkout(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                               "print(b.build_sdist(sys.argv[1]))", str(tmp_path / "out")],
        cwd=source, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    archive = tmp_path / "out" / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    for path in ("CHANGELOG.rst", "README.rst", "LICENSE", "MANIFEST.in",
                 "examples/flask_app.py", "examples/quickstart.py", "benchmarks/README.rst",
                 "benchmarks/overhead.py", "docs/conf.py", "docs/index.rst", PAGE,
                 "tests/conftest.py", "tests/doc_blocks.py", "refresher/py.typed"):
        assert path in names, path
    expected = {str(p.relative_to(ROOT)) for folder in ("examples", "benchmarks", "docs")
                for p in (ROOT / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and "_build" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")
                or n.startswith("docs/_build")]
