"""The console's session: the bearer token of `tidm serve`, kept in an HTTP-only, SameSite=Strict
cookie, and the CSRF token forms carry with it.

The cookie holds the token itself and is checked on every request with the read service's own
`AccessControl.authenticate`, so a revoked token stops working at once and replicas need no shared
session store. The CSRF token is an HMAC of a fixed label under the session token: only a page that
the console rendered for this session knows it, and it is the same on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["COOKIE", "LOGIN_COOKIE", "csrf_matches", "csrf_token", "login_nonce"]

COOKIE = "tidm_console"
# A login form's own double-submit token (there is no session yet to derive one from).
LOGIN_COOKIE = "tidm_console_login"
_LABEL = b"tidm-console-csrf/1"


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose bearer token is `session_token`."""
    return hmac.new(session_token.encode("utf-8"), _LABEL, hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(csrf_token(session_token), sent)


def login_nonce() -> str:
    return secrets.token_urlsafe(24)
