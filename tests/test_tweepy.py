"""The tweepy recipe: ``client.session = session`` makes tweepy's calls refresh transparently;
``route_to_emulator`` sends tweepy's fixed host to an emulator, given as an object or a URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests
from doc_blocks import doc_block

from refresher import JSONTokenStore, LoginFlow, MemoryTokenStore
from refresher.testing import DEFAULT_CLIENT_ID, route_to_emulator

tweepy = pytest.importorskip("tweepy")


def test_tweepy_client_refreshes_through_a_refreshing_session(x_emulator, make_session):
    store = MemoryTokenStore()
    session = make_session(store=store)
    client = tweepy.Client(bearer_token="unused: the session supplies the token")
    client.session = session
    route_to_emulator(session, x_emulator)  # tweepy calls https://api.twitter.com

    assert client.get_me(user_auth=False).data.username == "emulated_user"
    x_emulator.expire_access_token(session.token["access_token"])
    assert client.get_me(user_auth=False).data.username == "emulated_user"  # no Unauthorized
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 1


def test_tweepy_posts_a_tweet_and_gets_forbidden_for_a_duplicate(x_emulator, make_session):
    token = x_emulator.issue_token(scope="tweet.read tweet.write users.read offline.access")
    session = make_session(token=token)
    client = tweepy.Client(bearer_token="unused")
    client.session = session
    route_to_emulator(session, x_emulator)
    assert client.create_tweet(text="hello", user_auth=False).data["text"] == "hello"
    with pytest.raises(tweepy.Forbidden):
        client.create_tweet(text="hello", user_auth=False)
    assert x_emulator.stats.refreshes == 0  # a young token's 403 is not about the token


def test_route_to_emulator_works_on_a_plain_session(x_emulator) -> None:
    import requests

    session = requests.Session()
    route_to_emulator(session, x_emulator)
    token = x_emulator.issue_token()
    response = session.get("https://api.x.com/2/users/me",
                           headers={"Authorization": f"Bearer {token['access_token']}"})
    assert response.json()["data"]["id"] == "1000000001"


def test_route_to_emulator_takes_the_emulators_url(x_emulator, make_session):
    session = make_session()
    route_to_emulator(session, x_emulator.url + "/")  # a URL, as another process serves it
    client = tweepy.Client(bearer_token="unused")
    client.session = session
    x_emulator.expire_access_token(session.token["access_token"])
    assert client.get_me(user_auth=False).data.username == "emulated_user"
    assert x_emulator.stats.refreshes == 1
    for wrong in ("127.0.0.1:8000", "", None, object()):
        with pytest.raises(ValueError, match="an XEmulator or its URL"):
            route_to_emulator(requests.Session(), wrong)


@pytest.mark.integration
def test_the_docs_recipe_as_printed_against_an_emulator(x_emulator_factory, tmp_path):
    """The reader's steps: log in as alice (to an emulator whose tokens live a second), put
    the page's offline lines after ``client.session = session``, run the script."""
    x = x_emulator_factory(access_ttl=1.0)
    store = tmp_path / "tokens.json"
    flow = LoginFlow(DEFAULT_CLIENT_ID, redirect_uri="http://127.0.0.1:0/callback",
                     authorize_url=x.authorize_url, token_url=x.token_url, api_url=x.api_url,
                     scopes="tweet.read tweet.write users.read offline.access")
    token = flow.run_local_server(open_browser=lambda url: requests.get(url, timeout=10))
    flow.session(token, store=str(store), account="alice").close()
    JSONTokenStore(store).save_metadata("alice", {  # what `refresher login` records
        "client_id": DEFAULT_CLIENT_ID, "token_url": x.token_url, "api_url": x.api_url})

    recipe = doc_block("docs/howto/tweepy.rst", "A bot that posts")
    offline = doc_block("docs/howto/tweepy.rst", "Run it against the emulator")
    anchor = "client.session = session\n"
    assert anchor in recipe and "route_to_emulator(session, os.environ[" in offline
    script = tmp_path / "bot.py"
    script.write_text(recipe.replace(anchor, anchor + offline))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env.update(REFRESHER_STORE=str(store), REFRESHER_API_URL=x.api_url)  # the exports
    x.access_ttl = 60  # the pair the script gets cannot run out in flight, however busy
    time.sleep(1.1)  # the script starts with an expired access token (X refuses a duplicate
    # tweet, so it runs once)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"@emulated_user tweeted \d+\n", done.stdout)
    assert x.stats.refreshes >= 1 and x.stats.reused_refresh_tokens == 0
    assert x.stats.unauthorized == 0  # refreshed before sending, never a 401 at all
