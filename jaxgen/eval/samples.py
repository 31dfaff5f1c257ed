"""Checking and loading sample images for evaluation.

Every problem raises ``ValueError`` with a one-line message (the CLI prints it as
``jaxgen eval: error: ...`` and exits 2). Accepted inputs:

* shape [N, H, W] or [N, H, W, 1], with (H, W) the reference's image size (28 x 28 for MNIST);
* dtype uint8 in 0..255; or uint8 holding only 0/1 (binarized data, as jaxgen's data layer
  reads it); or bool (binarized: False -> 0, True -> 1); or float16/32/64 in [0, 1] (values
  within 1e-6 outside are clipped). Other integer dtypes are refused, whatever their values:
  int64 digits could mean 0..255 or 0/1, and a guess would silently skew every metric;
* finite values only (no NaN/Inf);
* at least :data:`MIN_SAMPLES` images (k-NN precision/recall need more than k=3 points and KID
  subsets of half the set need 2 points each; 10 keeps every statistic meaningful).
"""
from __future__ import annotations

import zipfile

import numpy as np

MIN_SAMPLES = 10
_FLOAT_TOL = 1e-6


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def validate_images(images: object, image_shape: tuple[int, int] = (28, 28),
                    what: str = "images") -> np.ndarray:
    """Checks sample images and returns them as float32 [N, H, W, 1] in [0, 1].

    Args:
      images: array-like [N, H, W] or [N, H, W, 1] (see the module docstring for dtypes/ranges).
      image_shape: the (H, W) the reference expects.
      what: how to name the input in error messages.
    """
    try:
        x = np.asarray(images)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise ValueError(f"{what} cannot be read as an array: {_one_line(e)}") from None
    h, w = image_shape
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, 1):
        raise ValueError(f"{what} must have shape [N, {h}, {w}] or [N, {h}, {w}, 1], "
                         f"got {list(np.shape(images))}")
    if len(x) < MIN_SAMPLES:
        raise ValueError(f"{what}: need at least {MIN_SAMPLES} samples, got {len(x)}")
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        scale = 255.0 if x.max() > 1 else 1.0  # uint8 holding only 0/1 is binarized data
        return x.astype(np.float32) / scale
    if np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what}: integer images must be uint8 (0..255), got {x.dtype} with "
                         f"values {x.min()}..{x.max()}; convert to uint8 or to float in [0, 1]")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: dtype must be uint8, bool or float, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} values are NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_FLOAT_TOL or hi > 1.0 + _FLOAT_TOL:
        raise ValueError(f"{what}: float images must lie in [0, 1], got values in "
                         f"[{lo:.4g}, {hi:.4g}] (map [-1, 1] by (x + 1) / 2; divide 0..255 by 255)")
    return np.clip(x, 0.0, 1.0)


# File signatures of what is most often passed by mistake, so the error says what the file is.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz is one), or an empty one
_NOT_NPZ = (
    (b"\x93NUMPY", "a .npy array"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    *((b"\x80" + bytes([v]), "a Python pickle") for v in range(2, 6)),  # pickle protocols 2-5
)
_SAVE_HINT = "save samples with np.savez(path, images=array)"


def _reason(e: BaseException) -> str:
    """numpy's message in one line, except where it would suggest loading pickles."""
    text = _one_line(e)
    return "it holds pickled Python objects" if "pickle" in text.lower() else text


def _what_file_is(head: bytes) -> str | None:
    """What a file that starts with ``head`` is, when it is not a zip archive ("" when unknown);
    None if it is a zip archive."""
    if head.startswith(_ZIP_MAGIC):
        return None
    if not head:
        return "an empty file"
    for magic, what in _NOT_NPZ:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return "a text file"
    return ""


def load_samples_npz(path: str, image_shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Reads the ``images`` array of an .npz file and validates it (see :func:`validate_images`).

    Pickled data is never loaded. Each problem is one line saying what the file is not: not an
    .npz archive (naming what it is instead: a .npy array, a PNG image, a text file, ...), no
    'images' array, an array of Python objects, or images of the wrong shape, dtype or range.

    Returns: float32 [N, H, W, 1] in [0, 1].
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise ValueError(f"samples file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"samples file {path} is a directory, not an .npz archive") from None
    except OSError as e:
        raise ValueError(f"cannot read samples file {path}: {e.strerror or _one_line(e)}") from None
    what = _what_file_is(head)
    if what is not None:
        what = f"is {what}, not" if what else "does not start with a zip signature: it is not"
        raise ValueError(f"samples file {path} {what} an .npz archive ({_SAVE_HINT})")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read samples file {path} as an .npz archive: {_reason(e)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a bad file, not a bad argument type
        raise ValueError(f"samples file {path} is not an .npz archive ({_SAVE_HINT})")  # noqa: TRY004
    with data:
        if "images" not in data.files:
            found = ", ".join(data.files) or "nothing"
            raise ValueError(f"samples file {path} has no 'images' array (found: {found}; "
                             f"{_SAVE_HINT})")
        try:
            images = data["images"]
        except ValueError as e:
            if "pickle" in str(e).lower():
                raise ValueError(f"'images' in {path} is an array of Python objects (dtype "
                                 f"object), not of numbers: save uint8 or float images") from None
            raise ValueError(f"cannot read 'images' from {path}: {_reason(e)}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot read 'images' from {path}: {_reason(e)}") from None
    return validate_images(images, image_shape, what=f"{path}: images")
