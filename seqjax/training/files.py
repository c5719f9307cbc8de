"""Writing the files of a run: never half of one, and a failure said in one line.

A file or directory that cannot be written (a full disk, a read-only mount, a path through
a regular file) raises ``WriteError``, whose message names the path and the cause.
"""

import os
import re
import tempfile
from pathlib import Path


class WriteError(OSError):
    """A file or directory of a run that cannot be written; the message says where and why."""


def cause(error: BaseException) -> str:
    """One line saying why a file operation failed (an OSError, or tensorstore's message,
    which carries the errno as ``os_error_code='28'``)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    errno = re.search(r"os_error_code='(\d+)'", text)
    if errno:
        return os.strerror(int(errno.group(1)))
    return text.splitlines()[0] if text.strip() else type(error).__name__


def writable_directory(path: str | os.PathLike) -> Path:
    """``path``, created if need be and checked to take a new file; a WriteError otherwise."""
    path = Path(path)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking == path:
        raise WriteError(f"cannot use {path} as a directory: it is a file")
    if blocking is not None:
        raise WriteError(f"cannot create {path}: {blocking} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write_test."):
            pass
    except OSError as error:
        raise WriteError(f"cannot write in {path}: {cause(error)}") from None
    return path


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, syncs it, then renames it over;
    a WriteError if it cannot (``path`` is then as it was)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise WriteError(f"cannot write {path}: {cause(error)}") from None
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {cause(error)}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
