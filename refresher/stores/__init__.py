"""Token stores: where the live token pair is kept and who may refresh it."""

from .base import MemoryTokenStore, TokenStore
from .jsonfile import JSONTokenStore

__all__ = ["TokenStore", "MemoryTokenStore", "JSONTokenStore"]
