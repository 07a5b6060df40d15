"""What a running analysis shows before it ends: the time left, and partial profiles as its layers finish.

Plain helpers for the store (no traits, no threads): `Eta` turns progress calls into a time-left figure;
`LiveProfile` collects the layers an analysis reports through `analyze(on_layer=...)` and says when to
publish a partial profile, so bars fill in while a long (data) analysis runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..profile import LayerResult, LossProfile, ModelInfo

INTERVAL = 0.5             # seconds between live (partial) profiles of a running analysis, at least ...
COST = 20                  # ... and 20x what building and drawing the last one took (a small share of both
                           # the worker's and the kernel's time)


class Eta:
    """Time left from an exponential moving average of the progress rate (steps per second).

    Elapsed / done since the start counts the model loading and dense runs as if they were steps, and
    swings with every slow layer; the average over about the last `tau` seconds follows the current pace.
    Each interval weighs by its length (weight 1 - exp(-dt / tau)), so bursts of quick calls count for the
    time they took, not their number. For the first `tau` seconds after the first step the rate is the plain
    average since that step (a first burst alone would otherwise set it).
    """

    def __init__(self, tau: float = 15.0):
        self.tau = tau
        self.rate: float | None = None
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def update(self, done: int, total: int, now: float) -> float | None:
        """Record progress `done` of `total` at time `now`; seconds left (None until a rate is known)."""
        if self.first is None:
            self.first = self.last = (now, done)
            return None
        t0, d0 = self.last
        dt = now - t0
        if dt > 0 and done >= d0:
            if now - self.first[0] <= self.tau:
                self.rate = (done - self.first[1]) / (now - self.first[0])
            else:
                weight = 1.0 - math.exp(-dt / self.tau)
                self.rate += weight * ((done - d0) / dt - self.rate)
            self.last = (now, done)
        if not self.rate:
            return None
        return max(total - done, 0) / self.rate


@dataclass(frozen=True)
class LayerId:
    """What a live profile needs of a layer (the store keeps no open model)."""
    index: int
    id: str
    name: str
    op_type: str
    weight: str
    shape: tuple
    params: int


class LiveProfile:
    """Partial profiles of a running analysis from the layers finished so far. Unfinished layers are NaN (so
    the bars keep their places); the finished (or cancelled) profile replaces the last one published."""

    def __init__(self, name: str, spec, levels: tuple[float, ...], settings: dict, layers: list[LayerId],
                 model: ModelInfo):
        self.name, self.spec, self.levels, self.settings = name, spec, tuple(levels), dict(settings)
        self.layers, self.model = layers, model
        self.measured: dict[int, object] = {}
        self.last: float | None = None
        self.build = 0.0

    def add(self, index: int, measured, now: float, redraw: float = 0.0) -> bool:
        """Record a finished layer (analysis.base.Measured); True when a new partial profile is due: the first
        layer at once, then after INTERVAL and COST x (building + `redraw`, what drawing the last one took)."""
        self.measured[index] = measured
        if self.last is not None and now - self.last < max(INTERVAL, COST * (self.build + redraw)):
            return False
        self.last = now
        return True

    def profile(self) -> LossProfile:
        """The partial profile now."""
        start = time.perf_counter()
        nan = (math.nan,) * len(self.levels)
        layers = []
        for i, l in enumerate(self.layers):
            m = self.measured.get(i)
            layers.append(LayerResult(
                index=l.index, id=l.id, name=l.name, op_type=l.op_type, weight=l.weight, shape=l.shape,
                params=l.params, levels=self.levels, values=nan if m is None else tuple(map(float, m.values)),
                energy_kept=nan if m is None else tuple(map(float, m.energy_kept)),
                energy=math.nan if m is None else float(m.energy), flags=() if m is None else tuple(m.flags)))
        profile = LossProfile(name=self.name, method=self.spec.name, model=self.model, settings=dict(self.settings),
                              layers=tuple(layers), partial=True, plan_cost=self.spec.plan_cost,
                              criterion=self.spec.criterion,
                              notes=(f"Running: {len(self.measured)} of {len(layers)} layers measured so far.",))
        profile.sensitivities                      # computed here, on the worker, not by the first chart
        self.build = time.perf_counter() - start
        return profile
