"""The event payload of DESIGN §5: one JSON object per dish scored, built in one place.

Why `id` is made here, once: the event is spooled before it is published and re-sent after an outage; consumers
de-duplicate on this id, so it must be fixed when the dish is scored, not when it is sent.
`position_s` (an extension, documented in the README) is the scored frame's position in a file source, so a clip's
events can be checked against its timeline; it is null for live cameras.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any


def significant(x: float, digits: int = 7) -> float:
    """`x` to `digits` significant digits: payloads stay short without rounding a small score (an MSE, or a
    kitchen's own model.threshold) to zero, as a fixed number of decimals would."""
    return float(f"{float(x):.{digits}g}")


def iso_utc(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z."""
    return (
        datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(wall * 1000) % 1000:03d}Z"
    )


def make_event(
    camera: str,
    slot: str,
    result: Any,
    model: dict,
    snapshot_topic: str,
    frame_offset: tuple[int, int],
    wall: float | None = None,
    position_s: float | None = None,
) -> dict:
    """The event for one scored dish; `result` is a scorer ScoreResult, regions move from crop to frame pixels."""
    ox, oy = frame_offset
    regions = [
        {"x": r.x + ox, "y": r.y + oy, "w": r.w, "h": r.h, "score": significant(r.score)}
        for r in result.regions
    ]
    return {
        "id": str(uuid.uuid4()),
        "camera": camera,
        "slot": slot,
        "ts": iso_utc(time.time() if wall is None else wall),
        "verdict": "anomaly" if result.anomalous else "ok",
        "score": significant(result.score),
        "threshold": significant(result.threshold),
        "severity": round(float(result.score) / float(result.threshold), 4),
        "regions": regions,
        "model": {"name": model["name"], "sha256": model["sha256"]},
        "snapshot": snapshot_topic,
        "position_s": None if position_s is None else round(position_s, 3),
    }
