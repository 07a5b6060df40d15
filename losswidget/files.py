"""Reading and writing the project's files (profiles, plans, pruned models): atomic writes, JSON read with
one clear error.

Writes go to a temporary file in the target's folder, are flushed to disk and renamed over the target, so
a reader (or a crash) never sees half a file. The rules around that, as other tools follow them:
- the new file gets the permissions of the file it replaces, or 0666 less the umask (mkstemp's 0600 would
  hide profiles from the group a shared folder is for);
- a symlink is followed: its target is replaced and the link kept;
- character devices and FIFOs (`--json /dev/stdout`, a pipe), and any path under /dev or /proc, are written
  through (appended), never replaced; directories, block devices and sockets are refused;
- the folder must exist: a mistyped path is an error, not a new directory tree;
- temporary files a killed writer left behind (`.NAME.PID.XXXX.tmp`, its process gone, or older than an
  hour) are removed when the same name is written again.
JSON is read with the failures Python's json module can raise on a damaged or hostile file turned into
one ProfileError naming the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from .errors import ProfileError

STALE_AFTER_S = 3600
_WRITE_THROUGH = ("/dev/", "/proc/")


def atomic_write(path, text: str, what: str = "file") -> None:
    """Write `text` (UTF-8) to `path` by the rules in the module doc; ProfileError when it cannot be written."""
    data = text.encode("utf-8")
    with replacing(path, what, ProfileError) as f:
        f.write(data)


@contextlib.contextmanager
def replacing(path, what: str = "file", error=ProfileError):
    """A binary file object whose contents replace `path` when the block ends without an exception (the
    module doc's rules); `error`: the LossWidgetError class OSErrors are reported as."""
    path = Path(path).expanduser()
    try:
        st = os.stat(path)                      # follows symlinks
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as exc:
        raise error(f"Cannot write {what} {path}: {_reason(exc)}.") from None
    if (st is not None and not stat.S_ISREG(st.st_mode)) or (
            st is not None and os.path.abspath(path).startswith(_WRITE_THROUGH)):
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise error(f"Refusing to write {what} to {path}: it is {_kind(st.st_mode)}, not a file.")
        try:
            with open(path, "ab") as f:
                yield f
        except OSError as exc:
            raise error(f"Cannot write {what} to {path}: {_reason(exc)}.") from None
        return
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        raise error(f"Cannot write {what} {path}: the folder {folder} does not exist.")
    tmp = None
    try:
        fd, tmp = temp_file(target)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise error(f"Cannot write {what} {path}: {_reason(exc)}.") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def temp_file(target: Path) -> tuple[int, str]:
    """(fd, path) of a new temporary file beside `target` that will replace it: named `.NAME.PID.XXXX.tmp`,
    with the permissions `target` has (or 0666 less the umask); stale ones of a killed writer removed."""
    _remove_stale(target.parent, target.name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _remove_stale(folder: Path, name: str) -> None:
    """Remove `.NAME.PID.*.tmp` files whose writer is gone (or that are over an hour old)."""
    prefix = f".{name}."
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            if old or (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))):
                os.unlink(entry.path)
        except OSError:
            pass                                 # gone already, or not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True                              # another user's process (or not a pid): leave its file
    return True


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)                   # read it the only portable way (and put it back)
        os.umask(mask)
        return mask


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    return "a special file"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# a profile of 10,000 layers at 100 levels is ~40 MB; parsing takes several times the file's size in memory
MAX_JSON_BYTES = 256 << 20


def read_bytes(path, what: str = "profile", limit: int = MAX_JSON_BYTES, *, whole: bool = True) -> bytes:
    """The bytes of the regular file `path` (ProfileError otherwise: a FIFO would block, /dev/zero never end):
    all of them, refusing files over `limit` bytes, or with `whole=False` at most its first `limit`."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ProfileError(f"{what.capitalize()} file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"Cannot read {what} {path}: {_reason(exc)}.") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ProfileError(f"Cannot read {what} {path}: it is {_kind(st.st_mode)}, not a file.")
            if whole and st.st_size > limit:
                raise ProfileError(f"{path} holds {st.st_size / 2**20:.0f} MB, too large to be a losswidget {what}.")
            raw = f.read(limit + 1 if whole else limit)
            if len(raw) > limit:
                raise ProfileError(f"{path} is too large to be a losswidget {what}.")
    except OSError as exc:
        raise ProfileError(f"Cannot read {what} {path}: {_reason(exc)}.") from None
    return raw


def read_json(path, what: str = "profile") -> dict:
    """The JSON object in `path`; ProfileError when it cannot be read or is not a JSON object. Only regular
    files of at most MAX_JSON_BYTES are read (read_bytes)."""
    raw = read_bytes(path, what)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not a readable {what}: it is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           f"the file is damaged or not a {what}.") from None
    except (RecursionError, ValueError) as exc:
        raise ProfileError(f"{path} is not a readable {what} ({type(exc).__name__}).") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path} is not a losswidget {what}.")
    return data
