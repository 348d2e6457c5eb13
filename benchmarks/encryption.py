"""What encryption at rest costs per save and per load: each store, plain and encrypted.

For each store (memory, a JSON file, SQLite; a store that cannot run here is a row saying
``skipped: <reason>``), the same account is read and written through the store API, once on
the store itself and once through ``EncryptedTokenStore`` (AES-256-GCM), in interleaved
rounds so that the machine's noise falls on both alike:

- ``load``: ``store.load(account)``;
- ``save``: what a refresh does to the store::

      with store.lock(a):
          version = store.load_versioned(a).version
          store.save_versioned(a, token, version)

The table shows the median microseconds per operation of the rounds, plain and encrypted,
their ratio (``x``) and the difference (``+us``): the cost of the encryption itself, next to
what the store costs anyway.

    python benchmarks/encryption.py                 # 200 operations per round, 15 rounds
    python benchmarks/encryption.py --ops 1000 --rounds 30 --json
    python benchmarks/encryption.py --quick         # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, progress, sql_unavailable  # noqa: E402

from refresher import EncryptedTokenStore, MemoryTokenStore, TokenStore, new_key  # noqa: E402
from refresher import open_store as open_plain  # noqa: E402

COLUMNS = ["store", "operation", "plain us", "encrypted us", "x", "+us"]
ACCOUNT = "alice"
TOKEN: dict[str, Any] = {
    "access_token": "a" * 90, "refresh_token": "r" * 90, "token_type": "bearer",
    "expires_in": 7200, "expires_at": 1_800_007_200.0,
    "scope": "tweet.read tweet.write users.read offline.access",
}


def _load(store: TokenStore) -> None:
    store.load(ACCOUNT)


def _save(store: TokenStore) -> None:
    with store.lock(ACCOUNT):
        version = store.load_versioned(ACCOUNT).version
        store.save_versioned(ACCOUNT, TOKEN, version)


OPERATIONS: dict[str, Callable[[TokenStore], None]] = {"load": _load, "save": _save}


def _stores(folder: str) -> dict[str, Callable[[], TokenStore] | str]:
    """Each store's maker (a fresh store on its own data), or why it cannot run."""
    why_not_sql = sql_unavailable()
    return {
        "memory": MemoryTokenStore,
        "json file": lambda: open_plain(os.path.join(folder, "tokens.json")),
        "sqlite": why_not_sql or (lambda: open_plain(f"sqlite:///{folder}/tokens.db")),
    }


def _per_op_us(store: TokenStore, operation: Callable[[TokenStore], None], ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        operation(store)
    return (time.perf_counter() - started) / ops * 1e6


def measure(make: Callable[[], TokenStore], ops: int, rounds: int) -> list[list[Any]]:
    """The rows of one store: each operation, plain and encrypted, median over rounds."""
    plain = make()
    encrypted = EncryptedTokenStore(make(), new_key())
    for store in (plain, encrypted):
        _save(store)
        for operation in OPERATIONS.values():
            _per_op_us(store, operation, max(1, ops // 10))  # warm up
    rows = []
    for name, operation in OPERATIONS.items():
        samples: dict[str, list[float]] = {"plain": [], "encrypted": []}
        for index in range(rounds):
            order = [("plain", plain), ("encrypted", encrypted)]
            for label, store in order if index % 2 == 0 else order[::-1]:
                samples[label].append(_per_op_us(store, operation, ops))
        base, sealed = median(samples["plain"]), median(samples["encrypted"])
        rows.append([name, round(base, 1), round(sealed, 1), round(sealed / base, 2),
                     round(sealed - base, 1)])
    plain.close()
    encrypted.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200, help="operations per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 ops, 3 rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    ops, rounds = (20, 3) if args.quick else (args.ops, args.rounds)
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for name, make in _stores(folder).items():
            if isinstance(make, str):
                rows.append([name, f"skipped: {make}"])
                continue
            progress(f"{name}: {rounds} rounds of {ops} operations, plain and encrypted")
            rows += [[name, *row] for row in measure(make, ops, rounds)]
    emit(args.json, "Encryption at rest: microseconds per operation, plain and encrypted",
         COLUMNS, rows,
         notes=["x: encrypted over plain; +us: what encryption adds to one operation "
                "(AES-256-GCM of the token's JSON, and its base64)."],
         extra={"ops": ops, "rounds": rounds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
