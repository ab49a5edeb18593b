"""The snapshot JPEG of a scored dish: what a cook glancing at a dashboard needs to see why it was flagged.

Anomalies get the heat map blended over the places above the threshold and a box around each region; an ok dish
is sent as it is. The size is capped (snapshot.max_width, then the quality is lowered until it fits MAX_BYTES)
because the snapshot is a retained message every dashboard receives on connect.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from edge.config import SnapshotConfig

log = logging.getLogger(__name__)

MAX_BYTES = 200_000
HEAT_ALPHA = 0.45


def render(crop_bgr: np.ndarray, result: Any) -> np.ndarray:
    """The crop with the anomaly's heat map and region boxes drawn (unchanged copy for an ok dish)."""
    img = crop_bgr.copy()
    if not result.anomalous:
        return img
    heat = np.clip(result.heatmap * 0.5, 0.0, 1.0)  # 1.0 (threshold) -> middle of the colour map
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    mask = (result.heatmap >= 1.0)[..., None]
    blended = cv2.addWeighted(img, 1 - HEAT_ALPHA, colour, HEAT_ALPHA, 0)
    img = np.where(mask, blended, img)
    t = max(1, img.shape[1] // 160)
    for r in result.regions:
        cv2.rectangle(img, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), (0, 0, 255), t)
    return img


def encode(img: np.ndarray, cfg: SnapshotConfig) -> bytes:
    """JPEG no wider than cfg.max_width and no bigger than MAX_BYTES."""
    if img.shape[1] > cfg.max_width:
        h = max(1, round(img.shape[0] * cfg.max_width / img.shape[1]))
        img = cv2.resize(img, (cfg.max_width, h), interpolation=cv2.INTER_AREA)
    q = cfg.jpeg_quality
    while True:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if len(buf) <= MAX_BYTES or q <= 20:
            return buf.tobytes()
        q -= 15


def snapshot_jpeg(crop_bgr: np.ndarray, result: Any, cfg: SnapshotConfig) -> bytes:
    return encode(render(crop_bgr, result), cfg)
