"""Writing a small file whole on any pyarrow filesystem, local or S3.

Readers see the previous file or the new one, never a part: a writer killed mid-write, or a
read during a truncating rewrite, must not leave a record that looks empty or damaged.
"""

from __future__ import annotations

import uuid

import pyarrow.fs as pafs


def write_whole(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to a file of its own beside ``path``, then move it over ``path``: a
    rename on disk; on S3 the copied object appears at once."""
    staged = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(staged) as stream:
        stream.write(data)
    fs.move(staged, path)
