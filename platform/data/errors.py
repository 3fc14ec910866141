"""The one error type the data pipeline raises for problems a user can fix."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the user can fix.

    The message is one line that names the config key and its value and says what to do,
    e.g. ``data.path='corpus/*.txt' matches no files; check the pattern``. The CLI prints
    it as is, without a traceback.
    """


class DamagedCopy(DataError):
    """A shared (S3) copy of prepared data that is incomplete or fails its meta.json's sizes
    and hashes.  A machine that can tokenize the source sets it aside and rebuilds it; one
    that cannot (a training worker) stops with this message."""
