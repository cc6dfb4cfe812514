"""``raypar tune``: print the step time of candidate splits measured on the engine (:mod:`raypar.engine.driver.tuning`)."""
from __future__ import annotations

from ..engine.tuning import Trial


def render(trials: list[Trial], title: str = ""):
    from rich.table import Table
    t = Table(title=title or None)
    for col in ("split", "step ms", "x profile's", "driver ms", "wait ms", "fine ms (each process)", ""):
        t.add_column(col, justify="left" if col in ("split", "") else "right")
    best = max((x.vs_profiled for x in trials if not x.error and x.vs_profiled == x.vs_profiled), default=None)
    for x in trials:
        note = ("profile's" if x.profiled else "") + (" fastest" if x.vs_profiled == best else "")
        if x.error:
            t.add_row(",".join(map(str, x.split)), "-", "-", "-", "-", "-", x.error[:60])
            continue
        t.add_row(",".join(map(str, x.split)), f"{x.step_ms:.1f}", f"{x.vs_profiled:.2f}", f"{x.driver_ms:.1f}",
                  f"{x.wait_ms:.1f}", " / ".join(f"{v:.1f}" for v in x.fine_ms), note.strip())
    return t
