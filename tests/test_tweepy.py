"""The tweepy recipe: ``client.session = session`` makes tweepy's calls refresh transparently."""

from __future__ import annotations

import pytest

from refresher import MemoryTokenStore
from refresher.testing import route_to_emulator

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
