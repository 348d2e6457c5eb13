"""EncryptedTokenStore: every store through it passes the store contract, writes no token in
the clear (read raw: the JSON file, the SQL rows, the Redis keys), and a wrong or missing key
is an error that changes nothing. Keys: REFRESHER_KEY, lists, the OS keyring."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.errors
import pytest
from test_store_contract import DictStore

import refresher
from refresher import (
    ConfigurationError,
    EncryptedTokenStore,
    EncryptionKeyError,
    JSONTokenStore,
    MemoryTokenStore,
    RefresherError,
    RefreshingSession,
    TokenStore,
    new_key,
    open_store,
)
from refresher.keys import key_id, parse_keys
from refresher.stores.sealed import is_sealed
from refresher.testing import DEFAULT_CLIENT_ID
from refresher.testing.contract import TokenStoreContract
from refresher.testing.redis_server import RedisServer

# Fixed keys (the same in every xdist worker); new_key() makes real ones.
KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
OLD_KEY = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
TOKEN = {"access_token": "AT-secret-access", "refresh_token": "RT-secret-refresh",
         "id_token": "ID-secret-id", "token_type": "bearer", "expires_in": 7200,
         "expires_at": 1_800_007_200.0, "scope": "tweet.read users.read offline.access"}
SECRETS = ("AT-secret-access", "RT-secret-refresh", "ID-secret-id", "tweet.read")


def _sealed(store: TokenStore) -> EncryptedTokenStore:
    return EncryptedTokenStore(store, KEY)


# -- the contract, through the wrapper, on every store ---------------------------------------


class TestEncryptedMemoryStore(TokenStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[TokenStore]:
        yield _sealed(MemoryTokenStore())


class TestEncryptedJSONStore(TokenStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[TokenStore]:
        yield _sealed(JSONTokenStore(tmp_path / "tokens.json"))

    @pytest.fixture
    def other(self, tmp_path: Path) -> TokenStore:
        return _sealed(JSONTokenStore(tmp_path / "tokens.json"))


@pytest.mark.redis
class TestEncryptedRedisStore(TokenStoreContract):
    @pytest.fixture
    def store(self, redis_server: RedisServer) -> Iterator[TokenStore]:
        store = open_store(redis_server.url, key=KEY)
        yield store
        store.close()

    @pytest.fixture
    def other(self, redis_server: RedisServer) -> Iterator[TokenStore]:
        other = open_store(redis_server.url, key=[KEY])
        yield other
        other.close()


class TestEncryptedSQLiteStore(TokenStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path, sqlalchemy_installed: None) -> Iterator[TokenStore]:
        store = open_store(f"sqlite:///{tmp_path / 'tokens.db'}", key=KEY)
        yield store
        store.close()

    @pytest.fixture
    def other(self, store: TokenStore, tmp_path: Path) -> Iterator[TokenStore]:
        other = open_store(f"sqlite:///{tmp_path / 'tokens.db'}", key=KEY)
        yield other
        other.close()


class TestEncryptedPostgreSQLStore(TokenStoreContract):
    @pytest.fixture
    def store(self, postgres_url: str) -> Iterator[TokenStore]:
        store = open_store(postgres_url, key=KEY)
        yield store
        store.close()

    @pytest.fixture
    def other(self, store: TokenStore, postgres_url: str) -> Iterator[TokenStore]:
        other = open_store(postgres_url, key=KEY)
        yield other
        other.close()


class TestEncryptedThirdPartyStore(TokenStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[TokenStore]:
        yield _sealed(DictStore())


# -- what is written: no token, in the raw file, rows and keys --------------------------------


def _save_refused_and_awaited(store: TokenStore) -> None:
    """A token saved, with a refusal and an answer-pending record beside it."""
    with store.lock("alice"):
        store.save_versioned("alice", TOKEN)
        store.mark_needs_login("alice", TOKEN["refresh_token"], client_id="cid",
                               token_url="https://api.x.com/2/oauth2/token")
    store.save_metadata("alice", dict(store.load_metadata("alice"), client_id="cid"))


def _no_secret(raw: str) -> None:
    assert [secret for secret in SECRETS if secret in raw] == []


def test_the_json_file_holds_no_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = open_store(path, key=KEY)
    _save_refused_and_awaited(store)
    raw = path.read_text()
    _no_secret(raw)
    entry = json.loads(raw)["accounts"]["alice"]
    assert entry["token"]["expires_at"] == TOKEN["expires_at"]  # readable, by choice
    assert entry["metadata"]["client_id"] == "cid"
    assert store.load("alice") == TOKEN and store.needs_login("alice")


@pytest.mark.parametrize("url", ["sqlite", "postgresql"])
def test_the_sql_rows_hold_no_token(url: str, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    import sqlalchemy

    if url == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        url = f"sqlite:///{tmp_path / 'tokens.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = open_store(url, key=KEY)
    _save_refused_and_awaited(store)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT * FROM refresher_tokens")).all()
    engine.dispose()
    assert len(rows) == 1
    _no_secret(repr(rows))
    assert store.load("alice") == TOKEN and store.needs_login("alice")
    store.close()


@pytest.mark.redis
def test_the_redis_keys_hold_no_token(redis_server: RedisServer) -> None:
    import redis

    store = open_store(redis_server.url, key=KEY)
    _save_refused_and_awaited(store)
    client = redis.Redis.from_url(redis_server.url)
    raw = {key: client.hgetall(key) if client.type(key) == b"hash" else client.get(key)
           for key in client.keys("*")}
    client.close()
    assert b"refresher:alice" in raw
    _no_secret(repr(raw))
    assert store.load("alice") == TOKEN and store.needs_login("alice")
    store.close()


def test_a_session_refreshing_through_it_writes_no_token(x_emulator: Any,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=open_store(path, key=KEY),
                                account="alice", token=x_emulator.issue_token(),
                                token_url=x_emulator.token_url, api_url=x_emulator.api_url)
    seen = [dict(session.token)]
    seen.append(session.refresh())
    assert session.get(x_emulator.api_url + "/2/users/me").status_code == 200
    session.close()
    raw = path.read_text()
    assert [t[k] for t in seen for k in ("access_token", "refresh_token") if t[k] in raw] == []


# -- keys: wrong, missing, rotated ------------------------------------------------------------


def test_a_wrong_key_is_an_error_that_names_no_key_and_changes_nothing(tmp_path: Path,
                                                                        x_emulator: Any) -> None:
    path = tmp_path / "tokens.json"
    _save_refused_and_awaited(open_store(path, key=OLD_KEY))
    before = path.read_bytes()
    wrong = open_store(path, key=KEY)
    for attempt in (lambda: wrong.load("alice"),
                    lambda: wrong.save_versioned("alice", TOKEN),  # a new login over it
                    lambda: RefreshingSession(DEFAULT_CLIENT_ID, store=wrong, account="alice",
                                              token_url=x_emulator.token_url),
                    lambda: RefreshingSession(DEFAULT_CLIENT_ID, store=wrong, account="alice",
                                              token=x_emulator.issue_token(),
                                              token_url=x_emulator.token_url)):
        with pytest.raises(EncryptionKeyError) as caught:
            attempt()
        message = str(caught.value)
        assert "key is wrong or missing" in message and key_id(parse_keys(OLD_KEY)[0]) \
            in message
        assert KEY not in message and OLD_KEY not in message
        assert isinstance(caught.value, RefresherError)
    assert path.read_bytes() == before
    assert x_emulator.stats.token_requests == 0


def test_an_altered_or_moved_token_does_not_decrypt(tmp_path: Path) -> None:
    inner = MemoryTokenStore()
    store = _sealed(inner)
    with store.lock("alice"):
        store.save("alice", TOKEN)
    inner.save("mallory", inner.load("alice") or {})  # alice's pair, under another name
    with pytest.raises(EncryptionKeyError, match="copied from another account"):
        store.load("mallory")
    altered = dict(inner.load("alice") or {})
    altered["ciphertext"] = altered["ciphertext"][:-8] + "AAAAAAAA"
    inner.save("alice", altered)
    with pytest.raises(EncryptionKeyError, match="altered"):
        store.load("alice")


def test_without_a_key_an_encrypted_account_is_refused_not_taken_for_logged_out(
        tmp_path: Path, x_emulator: Any) -> None:
    path = tmp_path / "tokens.json"
    _save_refused_and_awaited(open_store(path, key=KEY))
    before = path.read_bytes()
    plain = open_store(path)
    assert isinstance(plain, JSONTokenStore) and plain.accounts() == ["alice"]
    for attempt in (lambda: RefreshingSession(DEFAULT_CLIENT_ID, store=str(path),
                                              account="alice", token_url=x_emulator.token_url),
                    lambda: refresher.open_session("alice", store=plain,
                                                   token_url=x_emulator.token_url),
                    lambda: RefreshingSession(DEFAULT_CLIENT_ID, store=plain, account="alice",
                                              token=x_emulator.issue_token(),  # a new login
                                              token_url=x_emulator.token_url)):
        with pytest.raises(EncryptionKeyError, match="is encrypted, and no key was given"):
            attempt()
    assert path.read_bytes() == before
    assert x_emulator.stats.token_requests == 0


def test_a_plaintext_account_is_read_then_encrypted_at_its_next_save(tmp_path: Path,
                                                                     x_emulator: Any) -> None:
    path = tmp_path / "tokens.json"
    plain = JSONTokenStore(path)
    with plain.lock("alice"):
        plain.save("alice", x_emulator.issue_token())
    before = plain.load("alice") or {}
    store = open_store(path, key=KEY)
    assert store.load("alice") == before  # read as it is
    assert before["refresh_token"] in path.read_text()
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, account="alice",
                                token_url=x_emulator.token_url, api_url=x_emulator.api_url)
    after = session.refresh()  # the next save
    session.close()
    raw = path.read_text()
    assert before["refresh_token"] not in raw and after["refresh_token"] not in raw
    assert is_sealed(plain.load("alice")) and store.load("alice") == after


def test_with_several_keys_the_first_encrypts_and_every_one_decrypts() -> None:
    inner = MemoryTokenStore()
    with inner.lock("alice"):
        _sealed_with(inner, OLD_KEY).save("alice", TOKEN)
    rotated = EncryptedTokenStore(inner, [KEY, OLD_KEY])
    assert rotated.load("alice") == TOKEN
    assert (inner.load("alice") or {})["key_id"] == key_id(parse_keys(OLD_KEY)[0])
    with rotated.lock("alice"):
        version = rotated.load_versioned("alice").version
        rotated.save_versioned("alice", TOKEN, version)  # a save re-encrypts under the first
    assert (inner.load("alice") or {})["key_id"] == rotated.key_ids[0]
    assert _sealed_with(inner, KEY).load("alice") == TOKEN
    assert EncryptedTokenStore(inner, f"{KEY}, {OLD_KEY}").key_ids == rotated.key_ids
    with pytest.raises(EncryptionKeyError):
        _sealed_with(inner, OLD_KEY).load("alice")


def _sealed_with(store: TokenStore, key: str) -> EncryptedTokenStore:
    return EncryptedTokenStore(store, key)


def test_reencrypt_skips_what_is_under_the_first_key_and_encrypts_plaintext() -> None:
    inner = MemoryTokenStore()
    with inner.lock("old"):
        _sealed_with(inner, OLD_KEY).save("old", TOKEN)
    with inner.lock("plain"):
        inner.save("plain", TOKEN)
    store = EncryptedTokenStore(inner, [KEY, OLD_KEY])
    assert [store.reencrypt(name) for name in ("old", "plain", "nobody")] == [True, True,
                                                                             False]
    assert [store.reencrypt(name) for name in ("old", "plain")] == [False, False]
    assert all((inner.load(n) or {})["key_id"] == store.key_ids[0] for n in ("old", "plain"))


# -- where keys come from -----------------------------------------------------------------------


def test_open_store_encrypts_when_refresher_key_is_set(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFRESHER_KEY", f"{KEY},{OLD_KEY}")
    store = open_store(tmp_path / "tokens.json")
    assert isinstance(store, EncryptedTokenStore)
    assert store.key_ids == [key_id(k) for k in parse_keys([KEY, OLD_KEY])]
    assert repr(store) == f"EncryptedTokenStore(JSONTokenStore({str(tmp_path / 'tokens.json')!r}))"
    assert store.path == tmp_path / "tokens.json"
    monkeypatch.setenv("REFRESHER_KEY", " ")  # blank: unset
    assert isinstance(open_store(tmp_path / "tokens.json"), JSONTokenStore)


@pytest.mark.parametrize("bad", ["not-a-key", KEY[:-4], f"{KEY},short", ",", "keyring:"],
                         ids=["text", "too-short", "second-bad", "none", "no-name"])
def test_a_malformed_key_is_refused_before_anything_is_opened(bad: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("REFRESHER_KEY", bad)
    with pytest.raises(ConfigurationError) as caught:
        open_store(tmp_path / "folder" / "tokens.json")
    assert "REFRESHER_KEY" in str(caught.value) and KEY not in str(caught.value)
    assert not (tmp_path / "folder").exists()


class _MemoryKeyring(keyring.backend.KeyringBackend):
    """An OS keyring that lives in this process."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.items.pop((service, username), None)


@pytest.fixture
def os_keyring() -> Iterator[_MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = _MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_a_key_comes_from_the_os_keyring(os_keyring: _MemoryKeyring, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    os_keyring.set_password("refresher", "tokens", f"{KEY},{OLD_KEY}")
    monkeypatch.setenv("REFRESHER_KEY", "keyring:tokens")
    store = open_store(tmp_path / "tokens.json")
    assert isinstance(store, EncryptedTokenStore) and len(store.key_ids) == 2
    monkeypatch.setenv("REFRESHER_KEY", "keyring:nothing-here")
    with pytest.raises(ConfigurationError, match="holds no key named 'nothing-here'"):
        open_store(tmp_path / "tokens.json")


def test_no_keyring_backend_is_an_error_never_a_store_in_the_clear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring.backends.fail

    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())  # a headless Linux
    try:
        monkeypatch.setenv("REFRESHER_KEY", "keyring:tokens")
        with pytest.raises(ConfigurationError, match="no keyring backend"):
            open_store(tmp_path / "tokens.json")
        with pytest.raises(ConfigurationError, match="no keyring backend"):
            EncryptedTokenStore(MemoryTokenStore(), "keyring:tokens")
    finally:
        keyring.set_keyring(previous)
    assert not (tmp_path / "tokens.json").exists()


def test_new_key_makes_a_fresh_32_byte_key_each_time() -> None:
    first, second = new_key(), new_key()
    assert first != second
    assert [len(key) for key in parse_keys([first, second])] == [32, 32]


@pytest.fixture
def in_process_cli() -> Iterator[Any]:
    """``refresher.cli.main``, run in this process; the logging it configures (levels, a
    handler on the refresher logger) undone afterwards, for the tests that follow."""
    import logging

    from refresher.cli import main

    loggers = [logging.getLogger(name) for name in ("refresher", "refresher.settings")]
    saved = [(logger.level, list(logger.handlers)) for logger in loggers]
    yield main
    for logger, (level, handlers) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_key_new_can_keep_the_key_in_the_os_keyring(os_keyring: _MemoryKeyring,
                                                    in_process_cli: Any,
                                                    capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert in_process_cli(["key", "new", "--keyring", "tokens"]) == 0
    out = capsys.readouterr().out
    assert out == "export REFRESHER_KEY=keyring:tokens\n"
    kept = os_keyring.get_password("refresher", "tokens") or ""
    assert len(parse_keys(kept)) == 1 and kept not in out
    monkeypatch.setenv("REFRESHER_KEY", "keyring:tokens")
    assert isinstance(open_store(tmp_path / "tokens.json"), EncryptedTokenStore)


def test_key_new_without_a_keyring_backend_says_so(capsys: pytest.CaptureFixture[str],
                                                   in_process_cli: Any) -> None:
    import keyring.backends.fail

    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    try:
        assert in_process_cli(["key", "new", "--keyring", "tokens"]) == 2
    finally:
        keyring.set_keyring(previous)
    captured = capsys.readouterr()
    assert captured.out == "" and "no keyring backend" in captured.err
