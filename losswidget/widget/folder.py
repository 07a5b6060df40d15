"""A widget's `profiles_dir`: saved profiles read for one model, new ones written, none of it ever fatal.

Reading matches profiles to the model by content hash. Any file that cannot be used (damaged JSON, values
that do not load or give no sensitivities, a second profile of the same name, whatever it raises) is
skipped, and all of them are named in one notice; profiles of an earlier version of the same model file are reported, not
shown. Writing is atomic (profile.to_json) and never raises: a folder that cannot be created or written
turns into a notice and the profile stays in memory. Every notice goes to the `notice` callback.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from blake3 import blake3

from ..errors import first_line
from ..files import read_bytes
from ..profile import LossProfile, load_profile


# the model's path and hash near the top of a profile file, as to_json writes it (a folder shared by many models
# need not be parsed whole to find this model's profiles)
_MODEL = re.compile(r'"model":\s*\{\s*"path":\s*("(?:[^"\\]|\\.)*"|null),\s*"hash":\s*"([^"\\]*)"')


def peek(path: Path) -> tuple[str | None, str] | None:
    """(model path, model hash) from the first 4 KB of a profile file, or None when not found there."""
    head = read_bytes(path, "profile", 4096, whole=False).decode("utf-8", "replace")
    found = _MODEL.search(head)
    return None if found is None else (json.loads(found.group(1)), found.group(2))


def resolved(path) -> Path | None:
    try:
        return Path(path).resolve() if path else None
    except (OSError, RuntimeError, TypeError, ValueError):
        return None


class ProfileFolder:
    def __init__(self, path: Path, notice: Callable[[str], None]):
        self.path, self.notice = path, notice
        self.usable = True
        self.files: dict[str, Path] = {}      # profile name -> the file it is saved in

    def file_for(self, name: str, digest: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "profile"
        if slug != name:                      # distinct names never share a file ("a b" vs "a_b")
            slug += "-" + blake3(name.encode()).hexdigest()[:6]
        return self.path / f"{digest.split(':')[-1][:12]}-{slug}.json"

    def read(self, digest: str, model_path: str | None) -> dict[str, LossProfile]:
        """The saved profiles of the model with this hash, by name (the folder is made if missing)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.path.is_dir():
                raise NotADirectoryError("not a folder")
        except OSError as exc:
            self.usable = False
            self.notice(f"profiles_dir {self.path} cannot be used ({first_line(exc)}): profiles are kept in "
                        "memory only and will not be there next time.")
            return {}
        found, skipped, stale = {}, [], []
        here = resolved(model_path)
        for f in sorted(self.path.glob("*.json")):
            try:
                seen = peek(f)
                if seen is not None and seen[1] != digest:         # another model's: not read further
                    if here is not None and resolved(seen[0]) == here:
                        stale.append(f.name)
                    continue
                p = load_profile(f)
                if p.model.hash != digest:
                    if here is not None and resolved(p.model.path) == here:
                        stale.append(f.name)
                    continue
                p.sensitivities                    # what the bars need; a summary per file would cost a plan each
            except Exception as exc:  # one bad file must not stop the widget, whatever it raises
                skipped.append(f"{f.name} ({first_line(exc)[:160]})")
                continue
            if p.name in found:
                skipped.append(f"{f.name} (a second profile named {p.name!r})")
                continue
            found[p.name] = p
            self.files[p.name] = f
        if skipped:
            self.notice(f"Skipped {len(skipped)} profile file(s) in {self.path} that cannot be used: "
                        + "; ".join(skipped))
        if stale:
            self.notice(f"{len(stale)} saved profile(s) in {self.path} are of an earlier version of "
                        f"{Path(model_path).name} (its content changed) and are not shown: " + ", ".join(stale))
        return found

    def save(self, profile: LossProfile) -> str | None:
        """Write the profile; why it could not be (after a notice), or None."""
        if not self.usable:
            return "profiles_dir cannot be used"
        path = self.file_for(profile.name, profile.model.hash)
        try:
            profile.to_json(path)
        except Exception as exc:  # a full disk, a folder made read-only or replaced by a file, ...
            self.notice(f"Could not save profile {profile.name!r} to {path.parent} ({first_line(exc)}); it is "
                        "kept in memory for this session only (download it with Export to keep it).")
            return first_line(exc)
        old = self.files.get(profile.name)
        self.files[profile.name] = path
        if old is not None and old != path:
            self.delete_file(old)
        return None

    def delete(self, name: str, digest: str) -> None:
        """Delete the file of the profile of that name (the one it was read from or saved to)."""
        path = self.files.pop(name, None)
        if path is None and digest:
            path = self.file_for(name, digest)
        if path is not None:
            self.delete_file(path)

    def delete_file(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self.notice(f"Could not delete {path} ({first_line(exc)}); the profile will be back next time.")
