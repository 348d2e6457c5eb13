"""Store URLs in messages: what of a URL may be printed, and the password to keep out.

Both the Redis and the SQL store name their server in errors; a URL's user name, password
and query (which may carry credentials too) never reach a message.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["scrub_url", "url_password"]


def scrub_url(url: str, kind: str = "URL") -> str:
    """``url`` without its user name, password and query: safe to print. A URL that does
    not parse is ``<unparseable {kind}>``.

    >>> scrub_url("postgresql://app:s3cret@db.internal:5432/tokens?sslmode=require")
    'postgresql://db.internal:5432/tokens'
    >>> scrub_url("redis://:s3cret@cache.internal:6379/0")
    'redis://cache.internal:6379/0'
    >>> scrub_url("redis://[::1", "Redis URL")
    '<unparseable Redis URL>'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc, query="").geturl()
    except ValueError:
        return f"<unparseable {kind}>"


def url_password(url: str) -> str | None:
    """The password in ``url``, if any (``None`` for a URL that does not parse).

    >>> url_password("redis://:s3cret@cache.internal:6379/0")
    's3cret'
    """
    try:
        return urlsplit(url).password
    except ValueError:
        return None
