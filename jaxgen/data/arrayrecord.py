"""Image datasets as sharded ArrayRecord files: written by ``jaxgen prepare images``, read lazily.

A prepared directory holds, per split (``train``, ``eval``), shards
``{split}-{k:05d}-of-{n:05d}.array_record`` (splits ``train`` and ``test``, TFDS's names, so
``data.train_split`` / ``data.eval_split`` keep their defaults) and one ``info.json``:
``{"format": "jaxgen-images-v1", "shape": [H, W, C], "dtype": "uint8", "num_classes": K,
"classes": [...], "splits": {"train": {"files": [...], "counts": [...]}, ...}}``.

A record is ``int64 source index | int32 label | H*W*C uint8 pixels`` (little-endian): the
source index is the example's position in what was prepared, so a record names its origin.
Shards are written with ``group_size:1`` (one record per chunk), the layout Grain's random
access reads best, and a damaged chunk spoils one record, not a shard. ArrayRecord (Google,
built on Riegeli) checks a hash per chunk: a corrupt record is an error naming its file and
index, never silently wrong pixels.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Iterator, Sequence

import numpy as np

from jaxgen.errors import DataError, UsageError

FORMAT = "jaxgen-images-v1"
INFO_FILE = "info.json"
HEADER = struct.Struct("<qi")  # source index, label
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WRITER_OPTIONS = "group_size:1"


def _shard_name(split: str, k: int, n: int) -> str:
    return f"{split}-{k:05d}-of-{n:05d}.array_record"


def encode_record(index: int, label: int, image: np.ndarray) -> bytes:
    return HEADER.pack(int(index), int(label)) + np.ascontiguousarray(image, np.uint8).tobytes()


def write_split(out: str, split: str, examples: Iterable[tuple[int, int, np.ndarray]], count: int,
                records_per_shard: int) -> dict:
    """Writes ``count`` (index, label, image uint8 [H, W, C]) examples as shards of ``split``.

    Returns the split's ``{"files": [...], "counts": [...]}`` entry of ``info.json``.
    """
    from array_record.python import array_record_module

    n_shards = max(1, -(-count // records_per_shard))
    files, counts, it = [], [], iter(examples)
    for k in range(n_shards):
        name = _shard_name(split, k, n_shards)
        tmp = os.path.join(out, name + ".tmp")
        writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
        n = min(records_per_shard, count - k * records_per_shard)
        for _ in range(n):
            writer.write(encode_record(*next(it)))
        writer.close()
        os.replace(tmp, os.path.join(out, name))
        files.append(name)
        counts.append(n)
    return {"files": files, "counts": counts}


def write_info(out: str, info: dict) -> None:
    from jaxgen.train.workdir import write_atomic
    write_atomic(os.path.join(out, INFO_FILE), json.dumps(info, indent=1))


def load_info(path: str, fmt: str, how: str) -> tuple[dict, str]:
    """(info, info file) of a directory written by ``jaxgen prepare`` in format ``fmt``;
    DataError if it is not one (``how`` says how to write one)."""
    file = os.path.join(path, INFO_FILE)
    if not os.path.isdir(path):
        raise DataError(f"data.path={path!r} is not a directory; write one with: {how}")
    if not os.path.isfile(file):
        raise DataError(f"{path} has no {INFO_FILE}: it was not written by {how}")
    try:
        with open(file, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{file} is not readable JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        got = info.get("format") if isinstance(info, dict) else None
        raise DataError(f"{file}: format {got!r}, expected {fmt!r}")
    return info, file


def read_info(path: str) -> dict:
    """The ``info.json`` of a prepared directory, checked (DataError if missing or malformed)."""
    info, file = load_info(path, FORMAT, "jaxgen prepare images --from DIR_OR_NPZ --out DIR")
    try:
        shape = tuple(int(s) for s in info["shape"])
        for split in info["splits"].values():
            if len(split["files"]) != len(split["counts"]):
                raise ValueError("files and counts differ in length")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{file} is malformed ({type(e).__name__}: {e})") from None
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"{file}: image shape {list(shape)} is not [H, W, C]")
    return info


class ArrayRecordImages:
    """One split of a prepared directory as a random-access source (Grain ``MapDataset.source``).

    ``source[i]`` -> ``{"image": uint8 [H, W, C], "label": int32}``. Opening checks every shard's
    footer and record count; a record that fails its hash or has the wrong size raises
    :class:`DataError` naming the shard and the record's index in it. Picklable: Grain worker
    processes reopen the files.
    """

    def __init__(self, path: str, split: str):
        info = read_info(path)
        if split not in info["splits"]:
            raise DataError(f"{path} has no split {split!r} (it has: "
                            f"{', '.join(info['splits'])})")
        entry = info["splits"][split]
        self.path, self.split = path, split
        self.files = [os.path.join(path, f) for f in entry["files"]]
        self.counts = [int(c) for c in entry["counts"]]
        self.shape = tuple(int(s) for s in info["shape"])
        self.num_classes = int(info.get("num_classes", 0))
        self.scale = 255.0
        self._starts = np.cumsum([0] + self.counts)
        self._record_bytes = HEADER.size + int(np.prod(self.shape))
        if not self.files or self._starts[-1] == 0:
            raise DataError(f"{path}: split {split!r} has no records")
        self._readers = None
        self._check_shards()

    def _check_shards(self) -> None:
        from array_record.python import array_record_module

        for file, count in zip(self.files, self.counts):
            if not os.path.isfile(file):
                raise DataError(f"{file} is missing (listed in "
                                f"{os.path.join(self.path, INFO_FILE)})")
            try:
                reader = array_record_module.ArrayRecordReader(file)
                n = reader.num_records()
                reader.close()
            except RuntimeError as e:
                raise DataError(f"{file} is not a readable ArrayRecord shard "
                                f"({_first_line(e)})") from None
            if n != count:
                raise DataError(f"{file} holds {n} records, {INFO_FILE} says {count}")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_readers"} | {"_readers": None}

    def _reader(self, k: int):
        from array_record.python import array_record_module

        if self._readers is None:
            self._readers = [None] * len(self.files)
        if self._readers[k] is None:
            # random access: no read-ahead of the following chunks
            self._readers[k] = array_record_module.ArrayRecordReader(
                self.files[k], "readahead_buffer_size:0")
        return self._readers[k]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """The shard file and the index within it of record ``index``."""
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self.files[k], int(index - self._starts[k])

    def __getitem__(self, index: int) -> dict:
        index = int(index) % len(self)
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        local = int(index - self._starts[k])
        try:
            raw = self._reader(k).read([local])[0]
        except RuntimeError as e:
            raise DataError(f"{self.files[k]}: record {local} is corrupt "
                            f"({_first_line(e)})") from None
        if len(raw) != self._record_bytes:
            raise DataError(f"{self.files[k]}: record {local} has {len(raw)} bytes, expected "
                            f"{self._record_bytes} for images {list(self.shape)}")
        _, label = HEADER.unpack_from(raw)
        image = np.frombuffer(raw, np.uint8, offset=HEADER.size).reshape(self.shape)
        return {"image": image, "label": np.int32(label)}

    def records(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Every (source index, label, image) of the split, in order (sequential reads)."""
        from array_record.python import array_record_module

        for file in self.files:
            reader = array_record_module.ArrayRecordReader(file)
            try:
                for raw in reader.read_all():
                    idx, label = HEADER.unpack_from(raw)
                    yield idx, label, np.frombuffer(raw, np.uint8, offset=HEADER.size).reshape(
                        self.shape)
            finally:
                reader.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# --- preparing: a folder of images or an .npz -> a prepared directory

def _folder_examples(root: str) -> tuple[list[str], list[int], list[str]]:
    """Image files under ``root`` and their labels: class sub-folders (sorted names are labels
    0..K-1, like torchvision's ImageFolder), or images directly in ``root`` (label -1)."""
    def images_in(d):
        out = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            out += [os.path.join(dirpath, f) for f in sorted(filenames)
                    if f.lower().endswith(IMAGE_EXTENSIONS)]
        return out

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files, labels = [], []
    for label, c in enumerate(classes):
        found = images_in(os.path.join(root, c))
        files += found
        labels += [label] * len(found)
    top = sorted(os.path.join(root, f) for f in os.listdir(root)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, f)))
    if top and classes:
        raise UsageError(f"{root} holds both images and class folders; put every image in a "
                         "class folder (or none)")
    if top:
        return top, [-1] * len(top), []
    return files, labels, classes if files else []


def _load_image(file: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            im = im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            a = np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{file} is not a readable image ({_first_line(e)})") from None
    return a[..., None] if a.ndim == 2 else a


def _eval_ids(n: int, eval_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the examples held out for evaluation (a seeded, fixed choice)."""
    n_eval = int(round(n * eval_fraction))
    if eval_fraction > 0 and not 0 < n_eval < n:
        raise UsageError(f"{n} examples cannot be split with --eval-fraction {eval_fraction}")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_eval]] = True
    return mask


RECORDS_PER_SHARD = 4096  # ArrayRecord's read of one record costs ~2 ns per record of its
# shard on top of ~7 us (measured: 13 us at 4,000 records, 50 us at 20,000), and Grain reads one
# record per call: shards stay small (TFDS's ImageNet shards hold ~1,250)


def _per_shard(record_bytes: int, shard_mb: int, records_per_shard: int) -> int:
    return max(1, min(records_per_shard, (shard_mb << 20) // record_bytes))


def prepare_images(source: str, out: str, *, eval_fraction: float = 0.1,
                   size: tuple[int, int] | None = None, shard_mb: int = 256,
                   records_per_shard: int = RECORDS_PER_SHARD, seed: int = 0) -> dict:
    """Writes a folder of images or an ``.npz`` (``image`` [N, H, W(, C)] uint8, optional
    ``label``) as a prepared directory ``out`` (see the module docstring); returns its info.

    Shards hold at most ``records_per_shard`` records and ``shard_mb`` MiB.
    ``eval_fraction`` of the examples (a seeded choice) form the ``test`` split, the rest
    ``train``; each split keeps the source order. Images of a folder must share one size
    unless ``size`` (H, W) resizes them. Raises UsageError on bad input (one line).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UsageError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    if os.path.isdir(source):
        files, labels, classes = _folder_examples(source)
        if not files:
            raise UsageError(f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                             "directly or in class folders")
        first = _load_image(files[0], size)
        shape = first.shape

        def image(i):
            a = first if i == 0 else _load_image(files[i], size)
            if a.shape != shape:
                raise UsageError(f"{files[i]} is {a.shape[1]}x{a.shape[0]}x{a.shape[2]}, not "
                                 f"{shape[1]}x{shape[0]}x{shape[2]} like {files[0]}; pass "
                                 "--size HxW to resize every image")
            return a
        n, label_arr = len(files), np.asarray(labels, np.int64)
    elif os.path.isfile(source) and source.endswith(".npz"):
        with np.load(source) as f:
            if "image" not in f:
                raise UsageError(f"{source} has no 'image' array (found: {', '.join(f.files)})")
            arr = np.asarray(f["image"])
            label_arr = np.asarray(f["label"], np.int64) if "label" in f else \
                np.full(len(arr), -1, np.int64)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.dtype != np.uint8:
            raise UsageError(f"{source}: 'image' must be uint8 [N, H, W] or [N, H, W, C], got "
                             f"{arr.dtype} {list(arr.shape)}")
        if len(label_arr) != len(arr):
            raise UsageError(f"{source}: {len(label_arr)} labels for {len(arr)} images")
        if size is not None:
            raise UsageError("--size resizes a folder of images; an .npz is written as it is")
        n, shape, classes = len(arr), arr.shape[1:], []
        if n == 0:
            raise UsageError(f"{source} holds no images")
        image = arr.__getitem__
    else:
        raise UsageError(f"--from {source!r} is neither a folder of images nor an .npz file")

    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, INFO_FILE)):
        raise UsageError(f"{out} already holds a prepared dataset; choose another --out")
    is_eval = _eval_ids(n, eval_fraction, seed)
    per_shard = _per_shard(HEADER.size + int(np.prod(shape)), shard_mb, records_per_shard)
    splits = {}
    for split, ids in (("train", np.flatnonzero(~is_eval)), ("test", np.flatnonzero(is_eval))):
        if len(ids):
            splits[split] = write_split(out, split, ((int(i), int(label_arr[i]), image(int(i)))
                                                     for i in ids), len(ids), per_shard)
    num_classes = len(classes) or int(label_arr.max(initial=-1) + 1)
    info = {"format": FORMAT, "shape": [int(s) for s in shape], "dtype": "uint8",
            "num_classes": num_classes, "classes": classes, "source": os.path.abspath(source),
            "splits": splits}
    write_info(out, info)
    return info


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--size {text!r}: expected HxW, e.g. 32x32") from None
    return h, w


def synthetic(out: str, n: int, shape: Sequence[int] = (32, 32, 3), classes: int = 10,
              seed: int = 0) -> dict:
    """Writes ``n`` random train images and ``n // 10`` test images (a benchmark's dataset) as a
    prepared directory ``out``."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_shard = _per_shard(HEADER.size + int(np.prod(shape)), 256, RECORDS_PER_SHARD)

    def examples(count):
        for start in range(0, count, 4096):
            block = rng.integers(0, 256, (min(4096, count - start), *shape), dtype=np.uint8)
            labels = rng.integers(0, classes, len(block))
            for j, im in enumerate(block):
                yield start + j, int(labels[j]), im
    splits = {split: write_split(out, split, examples(count), count, per_shard)
              for split, count in (("train", n), ("test", max(1, n // 10)))}
    info = {"format": FORMAT, "shape": list(shape), "dtype": "uint8", "num_classes": classes,
            "classes": [], "source": "synthetic", "splits": splits}
    write_info(out, info)
    return info
