"""Many users in one process: what N sessions cost in memory, file descriptors and threads.

A web app with many X users keeps one session per user in one process. Each client below
runs in a fresh interpreter of its own: N sessions on one SQLite store, each seeded with a
token inside its refresh window (20 s left), each making one request to the X emulator
(which refreshes the token first), then:

- ``RSS MB``: resident memory grown from before the sessions were made to after the
  requests (``/proc/self/statm``), and ``KB/session``;
- ``fds``: open file descriptors then (sockets to the emulator, the store);
- ``threads``: threads alive after the requests (``threading.active_count()``);
- ``x RSS``, ``x fds``: those over Authlib's ``OAuth2Session`` doing the same (its
  ``update_token`` saving to the same store). Authlib is not a dependency of refresher:
  without it the row says it was skipped, and the ratios are over requests-oauthlib's
  ``OAuth2Session`` sending the token as it is (no refresh: a floor, not a peer).

Goals (issue 18): RSS and fds at most 1.2x and 1.1x Authlib's; threads bounded.

    python benchmarks/many_users.py                 # 1,000 users
    python benchmarks/many_users.py --users 200 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, progress  # noqa: E402

from refresher.testing import DEFAULT_CLIENT_ID, XEmulator  # noqa: E402

CLIENTS = ("refresher", "authlib", "requests-oauthlib")

WORKER = r'''
import gc, json, os, sys, threading, time
client, token_url, api_url, db = sys.argv[1], *sys.argv[3:6]
seeds = json.loads(sys.stdin.read())
from refresher import SQLTokenStore
store = SQLTokenStore(f"sqlite:///{db}")
me = api_url + "/2/users/me"

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def fds():
    return len(os.listdir("/proc/self/fd"))

if client == "refresher":
    from refresher import RefreshingSession
    def make(i, seed):
        return RefreshingSession(CLIENT_ID, store=store, account=f"user{i}", token=seed,
                                 token_url=token_url, api_url=api_url)
elif client == "authlib":
    from authlib.integrations.requests_client import OAuth2Session
    def make(i, seed):
        def update_token(token, refresh_token=None, access_token=None, account=f"user{i}"):
            with store.lock(account):
                store.save(account, dict(token))
        store.save(f"user{i}", seed)
        return OAuth2Session(CLIENT_ID, token=seed, token_endpoint=token_url,
                             update_token=update_token, leeway=60)
else:
    from requests_oauthlib import OAuth2Session
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    def make(i, seed):
        store.save(f"user{i}", seed)
        return OAuth2Session(CLIENT_ID, token=seed)
CLIENT_ID = os.environ["CLIENT_ID"]
make(-1, dict(seeds[0]))  # the imports a first session makes: not counted
gc.collect()
rss0, fds0 = rss(), fds()
sessions = [make(i, dict(seed)) for i, seed in enumerate(seeds[1:])]
ok = sum(s.get(me, timeout=30).status_code == 200 for s in sessions)
for s in sessions:  # refresher refreshes ahead of expiry in the background: let it end
    coordinator = getattr(s, "coordinator", None)
    if coordinator is not None:
        coordinator.wait_for_background(60)
gc.collect()
print(json.dumps({"rss": rss() - rss0, "fds": fds() - fds0, "threads": threading.active_count(),
                  "ok": ok}))
'''


def run_client(client: str, users: int, x: XEmulator, folder: str) -> dict[str, Any]:
    """One client's figures, from a fresh interpreter."""
    seeds = [dict(x.issue_token(), expires_in=7200, expires_at=time.time() + 20)
             for _ in range(users + 1)]
    db = os.path.join(folder, f"{client}.db")
    env = dict(os.environ, CLIENT_ID=DEFAULT_CLIENT_ID)
    before = x.stats.refreshes
    done = subprocess.run([sys.executable, "-c", WORKER, client, str(users), x.token_url,
                           x.api_url, db], input=json.dumps(seeds), capture_output=True,
                          text=True, timeout=600, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"client": client, "skipped": last[-200:]}
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures.update(client=client, refreshes=x.stats.refreshes - before)
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="sessions per client")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error("--users must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="refresher-many-") as folder, \
            XEmulator(host="127.0.0.1", port=0) as x:
        for client in CLIENTS:
            progress(f"{client}: {args.users} sessions")
            results[client] = run_client(client, args.users, x, folder)
    peer = results["authlib"] if "skipped" not in results["authlib"] else \
        results["requests-oauthlib"]
    columns = ["client", "RSS MB", "KB/session", "fds", "threads", "refreshes", "x RSS",
               "x fds"]
    rows = []
    notes = []
    for client in CLIENTS:
        r = results[client]
        if "skipped" in r:
            rows.append([client, None, None, None, None, None, None, None])
            notes.append(f"{client} skipped: {r['skipped']}")
            continue
        rows.append([client, r["rss"] / 1e6, r["rss"] / 1e3 / args.users, r["fds"],
                     r["threads"], r["refreshes"],
                     r["rss"] / max(peer["rss"], 1), r["fds"] / max(peer["fds"], 1)])
        if r["ok"] != args.users:
            notes.append(f"{client}: only {r['ok']} of {args.users} requests answered 200")
    notes.append(f"Ratios over {peer['client']}. {args.users} sessions per client, each "
                 "one request with a token inside its refresh window, one SQLite store.")
    emit(args.json, "many users: one process, one store", columns, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
