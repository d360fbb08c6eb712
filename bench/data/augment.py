"""Image augmentation of the streamed input pipeline, one example at a time on the host.

- ``cifar``: zero-pad by ``padding`` pixels, random crop back to the image size, random
  horizontal flip (He et al. 2016; the CIFAR recipe of Goyal et al.'s and Shallue et al.'s
  baselines). Evaluation images are left as they are.
- ``imagenet``: Inception-style random-resized crop (8%-100% of the area, aspect ratio 3/4-4/3,
  Szegedy et al. 2015, as Goyal et al. 2017 sec. 5.1) to ``image_size``, random horizontal
  flip; evaluation resizes the shorter side to ``image_size / 0.875`` (256 for 224) and takes
  the center ``image_size`` crop.
- ``none``: training images as they are (evaluation still center-crops with ``imagenet``
  sizing when the images vary in size, see :func:`eval_transform`).

Every random choice comes from :func:`example_rng`, a pure function of (replica seed, data
epoch, example index): an example gets the same augmentation whatever its batch, its position
in the batch, the number of processes or grain workers, and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.rng import RngStream

AUGMENTATIONS = ("none", "cifar", "imagenet")
EVAL_CROP_FRACTION = 0.875  # 224 / 256: the standard ImageNet evaluation crop


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one example's augmentation in one epoch of one replica."""
    return np.random.default_rng([int(seed), int(RngStream.AUGMENT), int(epoch), int(index)])


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an [H, W, C] image (uint8 or float32) with PIL."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.uint8:
        channels = [image] if image.shape[-1] == 3 else [image[..., c] for c in range(image.shape[-1])]
        out = [np.asarray(Image.fromarray(c).resize((width, height), Image.BILINEAR)) for c in channels]
        return out[0] if image.shape[-1] == 3 else np.stack(out, -1)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F")
                         .resize((width, height), Image.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(planes, -1).astype(image.dtype)


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """Zero-pad, crop a random window of the original size, flip left-right half the time
    (the window is copied straight into a zero image: no padded copy)."""
    h, w = image.shape[:2]
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    dy, dx = int(top) - padding, int(left) - padding
    out = np.zeros_like(image)
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        image[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out[:, ::-1] if rng.random() < 0.5 else out


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
    """Inception crop: a window of random area fraction and log-uniform aspect ratio, resized
    to ``size`` x ``size`` (the center crop when 10 draws do not fit); then a random flip."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the largest central crop within the ratio bounds
        in_ratio = w / h
        cw, ch = (w, int(round(w / ratio[0]))) if in_ratio < ratio[0] else (
            (int(round(h * ratio[1])), h) if in_ratio > ratio[1] else (w, h))
        cw, ch = min(cw, w), min(ch, h)
        top, left = (h - ch) // 2, (w - cw) // 2
    out = resize(image[top:top + ch, left:left + cw], size, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def center_crop(image: np.ndarray, size: int, fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
    """Resize the shorter side to ``size / fraction``, then the central ``size`` x ``size``."""
    h, w = image.shape[:2]
    short = int(round(size / fraction))
    nh, nw = (short, max(int(round(w * short / h)), short)) if h <= w else (
        max(int(round(h * short / w)), short), short)
    image = resize(image, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[top:top + size, left:left + size]


@dataclass(frozen=True)
class Augment:
    """The train and eval image transforms of a streamed dataset (picklable for grain workers).

    ``image_size``: output side for ``imagenet`` (and for evaluation of variable-size images);
    None keeps the stored size.
    """

    kind: str = "none"
    image_size: int | None = None
    padding: int = 4

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTATIONS:
            raise ValueError(f"augmentation {self.kind!r}; valid: {', '.join(AUGMENTATIONS)}")
        if self.kind == "imagenet" and self.image_size is None:
            raise ValueError("imagenet augmentation needs an image_size")

    def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "cifar":
            return pad_crop_flip(image, rng, self.padding)
        if self.kind == "imagenet":
            return random_resized_crop(image, rng, self.image_size)  # type: ignore[arg-type]
        return self.eval(image)

    def eval(self, image: np.ndarray) -> np.ndarray:
        if self.image_size is not None and image.shape[:2] != (self.image_size, self.image_size):
            return center_crop(image, self.image_size)
        return image

    @property
    def random(self) -> bool:
        """Whether training examples are transformed at random."""
        return self.kind != "none"
