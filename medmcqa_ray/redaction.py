"""What counts as a secret in a config, and how it is hidden wherever the config is shown.

Secrets are recognised by what a key is, never by a substring of its name that also names a count
(`eval.max_new_tokens` is a number, not a token): fields typed `SecretStr` (`data.hub_token`,
`model.hub_token`), keys whose name is a credential word (`*password*`, `*secret*`, `*api_key*`,
`*credential*`, or a `token` word of its own such as `hub_token`), and the user:password part of any
URI (`http://user:pw@host` -> `http://user:***@host`).

Redaction is for showing (stdout, logs, MLflow params). Stage cache keys hash the real values and leave
secrets out: a token changes who may read, not what a stage produces.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# "token" and "auth" count only as a word of the key (split at "_" / "-" / "."), so "max_new_tokens" and
# "author" never match; the others name a credential wherever they appear in a key.
_SECRET_WORD = re.compile(r"(^|[_.-])(token|auth)($|[_.-])", re.I)
_SECRET_PART = re.compile(r"password|passwd|secret|api_?key|credential", re.I)
# scheme://user:password@host -> keep the user, hide the password.
_URI_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<pw>[^@/\s]+)@")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_WORD.search(key) or _SECRET_PART.search(key))


def redact_uri(text: str) -> str:
    """`http://user:pw@host/x` -> `http://user:***@host/x`; anything else unchanged."""
    return _URI_CREDENTIALS.sub(lambda m: f"{m['head']}:{REDACTED}@", text)


def redacted(tree: Any) -> Any:
    """A copy of a config dump with every secret key's value and every URI password replaced.
    Pydantic dumps a set `SecretStr` as "**********"; it becomes REDACTED like any other secret."""
    if isinstance(tree, dict):
        return {k: (REDACTED if v is not None and is_secret_key(str(k)) else redacted(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redacted(v) for v in tree]
    if isinstance(tree, str):
        return REDACTED if tree == "**********" else redact_uri(tree)
    return tree


def without_secrets(tree: Any) -> Any:
    """A copy of a config dump with secret keys left out: what stage cache keys hash."""
    if isinstance(tree, dict):
        return {k: without_secrets(v) for k, v in tree.items() if not is_secret_key(str(k))}
    if isinstance(tree, list):
        return [without_secrets(v) for v in tree]
    return tree
