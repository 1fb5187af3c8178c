"""On-device augmentation, one key per batch split into one key per example.

- 28x28 / 32x32 sets: pad-and-crop (zero padding, `pad` pixels) and horizontal flip.
- ImageNet-style: random-resized crop (scale (0.08, 1), aspect ratio (3/4, 4/3)), horizontal flip,
  colour jitter (brightness +-32/255, saturation x[0.5, 1.5]) as the reference implementation.
Then per-channel normalisation. Everything is jnp, so it runs inside the jitted step on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 or [0, 1] float images -> (x / 255 - mean) / std, float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _flip(key: jax.Array, image: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def pad_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop of the zero-padded image back to its size, then a random horizontal flip."""
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(key, image):
    k1, k2, k3 = jax.random.split(key, 3)
    dy = jax.random.randint(k1, (), 0, 2 * pad + 1)
    dx = jax.random.randint(k2, (), 0, 2 * pad + 1)
    crop = jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, c))
    return _flip(k3, crop)

  return jax.vmap(one)(jax.random.split(key, b), padded)


def random_resized_crop_flip_jitter(
    key: jax.Array,
    images: jax.Array,
    out_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    brightness: float = 32 / 255,
    saturation: float = 0.5,
) -> jax.Array:
  """Inception-style crop resized to out_size (bilinear), flip, brightness/saturation jitter.

  Input float images in [0, 1]; output float in [0, 1].
  """
  b, h, w, c = images.shape

  def one(key, image):
    ks = jax.random.split(key, 6)
    area = jax.random.uniform(ks[0], (), minval=scale[0], maxval=scale[1]) * h * w
    log_r = jax.random.uniform(ks[1], (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    r = jnp.exp(log_r)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    y0 = jax.random.uniform(ks[2], ()) * (h - ch)
    x0 = jax.random.uniform(ks[3], ()) * (w - cw)
    sy, sx = out_size / ch, out_size / cw
    crop = jax.image.scale_and_translate(
        image, (out_size, out_size, c), (0, 1), jnp.array([sy, sx]), jnp.array([-y0 * sy, -x0 * sx]),
        method="linear", antialias=False,
    )
    crop = _flip(ks[4], crop)
    kb, ksat = jax.random.split(ks[5])
    crop = crop + jax.random.uniform(kb, (), minval=-brightness, maxval=brightness)
    if c == 3:
      gray = jnp.mean(crop, axis=-1, keepdims=True)
      f = jax.random.uniform(ksat, (), minval=1 - saturation, maxval=1 + saturation)
      crop = gray + f * (crop - gray)
    return jnp.clip(crop, 0.0, 1.0)

  return jax.vmap(one)(jax.random.split(key, b), images.astype(jnp.float32))


def center_crop_resize(images: jax.Array, out_size: int, crop_fraction: float = 0.875) -> jax.Array:
  """Evaluation transform of ImageNet-style sets: central crop_fraction of the image, resized.

  The reference resizes to out_size / 0.875 then center-crops out_size; cropping the central
  0.875 of the host-resized square and resizing to out_size is the same up to interpolation.
  """
  b, h, w, c = images.shape
  ch, cw = max(1, round(h * crop_fraction)), max(1, round(w * crop_fraction))
  y0, x0 = (h - ch) // 2, (w - cw) // 2
  crop = images[:, y0:y0 + ch, x0:x0 + cw].astype(jnp.float32)
  if (ch, cw) == (out_size, out_size):
    return crop
  return jax.image.resize(crop, (b, out_size, out_size, c), method="linear", antialias=True)


def make_preprocess(kind: str, mean: Sequence[float], std: Sequence[float], resolution: int,
                    train: bool):
  """fn(key, uint8 images) -> normalised float32 NHWC at `resolution`, run inside the jitted step.

  kind "pad_crop_flip" (28x28 / 32x32 sets) or "inception" (ImageNet-style); train=False gives the
  deterministic evaluation transform (the key is ignored).
  """
  if kind not in ("pad_crop_flip", "inception"):
    raise ValueError(f"unknown augmentation {kind!r}; valid: pad_crop_flip, inception")

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    if kind == "inception":
      x = images.astype(jnp.float32) / (255.0 if images.dtype == jnp.uint8 else 1.0)
      x = (random_resized_crop_flip_jitter(key, x, resolution) if train
           else center_crop_resize(x, resolution))
      return normalize(x, mean, std)
    x = normalize(images, mean, std)
    if x.shape[1] != resolution or x.shape[2] != resolution:
      x = jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[3]), method="linear")
    return pad_crop_flip(key, x) if train else x

  return fn
