"""Reading and writing the project's files (profiles, plans): atomic writes, JSON read with one clear error.

Writes go to a temporary file in the target's folder and are renamed over the target, so a reader (or a
crash) never sees half a file. JSON is read with the failures Python's json module can raise on a damaged
or hostile file turned into one ProfileError naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import ProfileError


def atomic_write(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path, what: str = "profile") -> dict:
    """The JSON object in `path`; ProfileError when it cannot be read or is not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{what.capitalize()} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"Cannot read {what} {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           f"the file is damaged or not a {what}.") from None
    except (RecursionError, ValueError) as exc:
        raise ProfileError(f"{path} is not a readable {what} ({type(exc).__name__}).") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path} is not a losswidget {what}.")
    return data
