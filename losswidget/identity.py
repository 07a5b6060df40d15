"""A model's identity: the content hash that matches saved profiles to models, without hashing twice.

The hash is "blake3:<hex>" of the model file, or with external data of the files' digests in name order
(onnxfile.ModelFile.content_hash). Hashing a 13 GB model costs seconds, so hashes are remembered:
- in this process, and on disk in `$XDG_CACHE_HOME/losswidget/hashes.json` (default ~/.cache), keyed by
  every file's (path, device, inode, size, mtime_ns, ctime_ns): a file rewritten, replaced, touched or
  restored with an old mtime has a new key and is hashed again. A file modified in the last two seconds
  before its hash started is not remembered on disk (its mtime may not move on the next write yet, as in
  git's "racy" index), nor one whose stat changed while it was hashed;
- the cache holds at most MAX_ENTRIES hashes (the newest), is written atomically (temporary file and
  rename; concurrent writers lose at most an entry), and a damaged or unreadable cache is ignored and
  rewritten, never an error: it only ever saves time.
`LOSSWIDGET_HASH_CACHE=0` turns the disk cache off.

`hash_files` blocks; `cached_hash` answers from the caches only; `hash_files_async` hashes on a daemon
thread (one per set of files, however many ask) and returns a Future. Files are read in 16 MB pieces
with BLAKE3's own threads (the process's resident memory does not grow with the model).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from blake3 import blake3

log = logging.getLogger(__name__)

MAX_ENTRIES = 512
PIECE = 1 << 24
RACY_SECONDS = 2.0

_memory: dict[tuple, str] = {}
_pending: dict[tuple, Future] = {}
_lock = threading.Lock()


def cache_file() -> Path | None:
    """Where hashes are remembered on disk (None: turned off)."""
    if os.environ.get("LOSSWIDGET_HASH_CACHE", "1").strip() in ("0", "off", "no", "false"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "losswidget" / "hashes.json"


def file_key(paths) -> tuple:
    """The files' identity as the caches key it: (path, device, inode, size, mtime_ns, ctime_ns) each."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(Path(p).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _text(key: tuple) -> str:
    return json.dumps(key, separators=(",", ":"))


def _load() -> dict:
    path = cache_file()
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
        if isinstance(entries, dict):
            return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("hash"), str)}
    except (OSError, ValueError, RecursionError):
        pass
    return {}


def _store(key: tuple, digest: str) -> None:
    path = cache_file()
    if path is None:
        return
    entries = _load()
    entries[_text(key)] = {"hash": digest, "at": time.time()}
    if len(entries) > MAX_ENTRIES:
        newest = sorted(entries.items(), key=lambda kv: kv[1].get("at", 0) if isinstance(kv[1].get("at"), (int, float)) else 0)
        entries = dict(newest[-MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "entries": entries}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:                      # a read-only home, a full disk: the cache only saves time
        log.debug("cannot write the hash cache %s: %s", path, exc)


def cached_hash(paths) -> str | None:
    """The hash of these files if a cache knows it for their current state, else None (never hashes)."""
    return _lookup(file_key(paths))


def _digest(path) -> blake3:
    h = blake3(max_threads=blake3.AUTO)
    buf = bytearray(PIECE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return h
            h.update(view[:n])


def compute_hash(paths) -> str:
    """"blake3:<hex>" of one file, or of the files' digests in the given order (no cache)."""
    digests = [_digest(p) for p in paths]
    h = digests[0] if len(digests) == 1 else blake3(b"".join(d.digest() for d in digests))
    return "blake3:" + h.hexdigest()


def hash_files(paths) -> str:
    """The files' hash, from a cache when their state is known, else computed here (and remembered)."""
    paths = tuple(paths)
    key = file_key(paths)
    known = _lookup(key)
    if known is not None:
        return known
    with _lock:
        running = _pending.get(key)
    return running.result() if running is not None else _compute(paths, key)


def hash_files_async(paths) -> Future:
    """A Future of the files' hash: done at once when a cache knows it; else computed on a daemon thread,
    one per file state however many callers ask."""
    paths = tuple(paths)
    key = file_key(paths)
    future: Future = Future()
    known = _lookup(key)
    if known is not None:
        future.set_result(known)
        return future
    with _lock:
        running = _pending.get(key)
        if running is not None:
            return running
        _pending[key] = future

    def work():
        try:
            future.set_result(_compute(paths, key))
        except BaseException as exc:  # reported to every waiter
            future.set_exception(exc)
        finally:
            with _lock:
                _pending.pop(key, None)

    threading.Thread(target=work, name="losswidget-hash", daemon=True).start()
    return future


def _lookup(key: tuple) -> str | None:
    with _lock:
        if key in _memory:
            return _memory[key]
    entry = _load().get(_text(key))
    if entry is None:
        return None
    with _lock:
        _memory[key] = entry["hash"]
    return entry["hash"]


def _compute(paths: tuple, key: tuple) -> str:
    began = time.time()
    digest = compute_hash(paths)
    with _lock:
        _memory[key] = digest
    # on disk only what cannot have changed unseen (see the module doc)
    if file_key(paths) == key and all(began - k[4] / 1e9 > RACY_SECONDS for k in key):
        _store(key, digest)
    return digest
