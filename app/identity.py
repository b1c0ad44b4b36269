"""Who a request comes from. The studio asks the service everything on behalf of this identity, and the
service decides, in one place, what it may see and do.

- On a Space with Hugging Face sign-in (``hf_oauth: true`` in the README's front matter), a signed-in
  visitor is their account: the server's signed session says so, and their runs follow them across
  browsers.
- Otherwise (or before signing in) a visitor is the random token their browser keeps (``gr.BrowserState``).
  A token is only ever hex, so no browser can pass itself off as an account (``hf:...``).
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any, Optional

TOKEN = re.compile(r"[0-9a-f]{16,64}")


def sign_in_enabled() -> bool:
    """A Space with ``hf_oauth: true`` sets OAUTH_CLIENT_ID (and every Space sets SPACE_ID)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID") and os.environ.get("SPACE_ID"))


def owner_of(token: str, profile: Optional[Any] = None) -> str:
    """The identity behind a request: ``hf:<username>`` when signed in, else the browser's token, else ""."""
    if profile is not None and getattr(profile, "username", None):
        return f"hf:{profile.username}"
    return token if isinstance(token, str) and TOKEN.fullmatch(token) else ""


def token_for(token: str) -> str:
    """This browser's token, or a new one for a browser that has none (or sent something else)."""
    return token if isinstance(token, str) and TOKEN.fullmatch(token) else secrets.token_hex(16)
