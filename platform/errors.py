"""Errors told in one line: paralab says what went wrong and what to do, not a traceback, and
the libraries it wraps (MLflow, botocore, datasets, Ray) often put pages under their first line."""

from __future__ import annotations


def first_line(err: BaseException | str, *, typed: bool = False) -> str:
    """The first line of ``err``'s message, or its type's name when the message is empty.

    ``typed`` prefixes the type (``OSError: ...``), for library errors whose message alone
    does not say what kind of failure it was.
    """
    lines = str(err).strip().splitlines()
    if isinstance(err, str):
        return lines[0] if lines else err
    name = type(err).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if typed else lines[0]
