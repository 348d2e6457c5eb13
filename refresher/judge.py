"""CureJudge: may a refresh cure this 401/403? The rule, with the memories it needs.

A refresh is spent only on a refusal a refresh can cure: a 401 or 403 (the policy's
``refresh_status_codes``) to a token this coordinator handed out, not on the 401 brake (an
endpoint that answered 401 even right after a refresh), and for a 403 only when the policy
says it may be about the token (see :meth:`~refresher.RefreshPolicy.may_cure_403`). The
memories (which tokens were handed out, which came from a refresh here, which endpoints are
braked) live in a bounded :class:`~refresher.ledger.TokenLedger`.

Words (brake, cure, spend): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import logging

from .clock import Clock
from .ledger import TokenLedger
from .policy import RefreshPolicy, TokenState
from .token import Token

__all__ = ["CureJudge"]

# The coordinator's logger: these lines are about its refreshes, and keep the name they had.
log = logging.getLogger("refresher.coordinator")


class CureJudge:
    """Judges refused requests for one account (``account`` names it in log lines)."""

    def __init__(self, policy: RefreshPolicy, clock: Clock, account: str) -> None:
        self.policy, self.clock, self.account = policy, clock, account
        self._ledger = TokenLedger(policy.remembered_tokens, policy.remembered_refusals)

    def record(self, access_token: str, *, refreshed_here: bool) -> None:
        """``access_token`` is the one requests are sent with from now on."""
        self._ledger.record(access_token, refreshed_here=refreshed_here)

    def may_cure(self, status: int, access_token: str, endpoint: str,
                 problem_type: str | None, live: Token | None) -> bool:
        """See :meth:`~refresher.RefreshCoordinator.may_cure`; ``live`` is the token
        requests are sent with now."""
        if (status not in self.policy.refresh_status_codes
                or not self._ledger.handed_out(access_token)):
            return False
        if status == 403:
            current = live if live and live.get("access_token") == access_token else None
            cure = self.policy.may_cure_403(problem_type, current, self.clock.time(),
                                            refreshed_here=self._ledger.refreshed_here(
                                                access_token))
            if not cure:
                log.debug("403 (%s) from %s is not about the token; no refresh",
                          problem_type or "no problem type", endpoint)
            return cure
        if self.policy.brake_401 and self._ledger.braked(access_token, endpoint):
            log.debug("%d from %s to a token it refused after a refresh; no refresh",
                      status, endpoint)
            return False
        return True

    def refused_after_refresh(self, token: Token | str, endpoint: str,
                              live: Token | None) -> None:
        """See :meth:`~refresher.RefreshCoordinator.refused_after_refresh`."""
        if isinstance(token, str):  # judged by the live pair when it is that one
            current = live or {}
            token = current if current.get("access_token") == token else {"access_token": token}
        access = token.get("access_token")
        if not access or self.policy.state(token, self.clock.time()) is not TokenState.FRESH:
            return
        self._ledger.brake(access, endpoint)
        log.warning("account %r: %s still answered 401 after a refresh; not refreshing again "
                    "for its 401s while this token lives", self.account, endpoint)
