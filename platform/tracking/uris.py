"""URIs as they may be shown: printed by the CLI or logged as MLflow params. No MLflow import,
so that a command refused before it starts stays fast."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^/:@]+:)[^/@]*@")


def without_password(uri: str) -> str:
    """``uri`` with the password of a ``user:password@`` part hidden: for what is printed or
    logged (an MLflow param), never for what connects."""
    return _PASSWORD.sub(r"\1***@", uri)
