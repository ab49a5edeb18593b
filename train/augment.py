"""Training-time augmentation for a fixed camera over the pass, and the batch feeder that applies it.

Why so mild: the camera is bolted above the pass, so a plate only ever appears slightly shifted or turned, under
slightly different light and white balance. Flips, large rotations or crops would teach the autoencoder to
reconstruct layouts it never sees in service (e.g. a mirrored garnish) and make it blind to misplaced components.
The autoencoder's target is the augmented image itself.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    shift: float = 0.04  # max translation, fraction of the side
    rotate_deg: float = 3.0  # max rotation
    brightness: float = 0.10  # max relative change of all channels
    white_balance: float = 0.05  # max relative change of each channel


def augment_image(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random small shift + turn + brightness + white-balance change of a float32 (H, W, C) unit image."""
    h, w = img.shape[:2]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    m[0, 2] += rng.uniform(-cfg.shift, cfg.shift) * w
    m[1, 2] += rng.uniform(-cfg.shift, cfg.shift) * h
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if out.ndim == 2:
        out = out[..., None]
    gain = (1.0 + rng.uniform(-cfg.brightness, cfg.brightness)) * (
        1.0 + rng.uniform(-cfg.white_balance, cfg.white_balance, size=out.shape[2])
    )
    return np.clip(out * gain.astype(np.float32), 0.0, 1.0)


def make_feeder(images: np.ndarray, batch_size: int, seed: int, cfg: AugmentConfig):
    """A Keras PyDataset of (x, x) batches, reshuffled and re-augmented every epoch, deterministic for a seed."""
    import keras

    class _Feeder(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self._order = self._permutation()

        def _permutation(self) -> np.ndarray:
            return np.random.default_rng([seed, self.epoch]).permutation(len(images))

        def __len__(self) -> int:
            return math.ceil(len(images) / batch_size)

        def __getitem__(self, idx: int):
            sel = self._order[idx * batch_size : (idx + 1) * batch_size]
            x = images[sel]
            if cfg.enabled:
                rng = np.random.default_rng([seed, self.epoch, idx])
                x = np.stack([augment_image(im, rng, cfg) for im in x])
            return x, x

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._order = self._permutation()

    return _Feeder()
