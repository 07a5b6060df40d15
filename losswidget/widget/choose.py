"""Which profile a view shows first: the most informative one, not the first to finish.

Rank by method: measured on data beats weights alone beats the architecture alone (one-shot > activation >
magnitude > approximated > anything else); a complete profile before a partial one of the same method;
then the newest (`created`, ISO time); then the name, so the choice never depends on dict order.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..profile import LossProfile

INFORMATIVENESS = ("one-shot", "activation", "magnitude", "approximated")


def rank(profile: LossProfile) -> tuple:
    """Sort key: smaller is more informative (module docstring)."""
    method = INFORMATIVENESS.index(profile.method) if profile.method in INFORMATIVENESS else len(INFORMATIVENESS)
    return method, bool(profile.partial)


def preferred_profile(profiles: Mapping[str, LossProfile] | Iterable[LossProfile]) -> str | None:
    """The name of the profile to show first, or None when there is none. Takes the store's `profiles`
    (name -> LossProfile) or any iterable of profiles."""
    items = list(profiles.items()) if isinstance(profiles, Mapping) else [(p.name, p) for p in profiles]
    if not items:
        return None
    # newest first within a rank: sort by name, then created descending, then rank (stable sorts)
    items.sort(key=lambda kv: kv[0])
    items.sort(key=lambda kv: kv[1].created or "", reverse=True)
    items.sort(key=lambda kv: rank(kv[1]))
    return items[0][0]
