"""The shipped weights of jaxgen's feature network: file format, checksum, loading, retraining.

The parameters of :class:`jaxgen.eval.feature_net.LeNet`, trained once with the recipe of
:mod:`jaxgen.eval.feature_net`, ship inside the package as
``jaxgen/eval/weights/lenet_<dataset>_v<NET_VERSION>.msgpack``. :data:`SHIPPED` records each
file's SHA-256, which :func:`load_feature_net` checks at every first load in a process; a
mismatch (or a missing file) raises :class:`WeightsError` in one line. Nothing is trained or
cached on the user's machine, so ``fd_lenet`` is one yardstick on every machine.

Reproducing the weights (about a minute on 2 CPU cores)::

    python -m jaxgen.eval --retrain OUT.msgpack     # prints test accuracy and SHA-256

The same recipe and seed on the same CPU and JAX version give the same bytes; other CPUs or
versions may round differently and give a network as accurate but not bitwise equal. Shipping
new weights means: retrain into ``jaxgen/eval/weights/``, bump ``NET_VERSION`` (the file name
carries it), record the printed checksum and accuracy in :data:`SHIPPED`, and update the pinned
checksum in ``tests/test_eval_feature_net.py``. Every ``fd_lenet`` figure then changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import sys
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import RunError
from jaxgen.eval.feature_net import (
    DATASETS,
    MIN_TEST_ACCURACY,
    NET_VERSION,
    FeatureNet,
    FeatureNetConfig,
    LeNet,
    load_dataset,
    test_accuracy,
    train_feature_net,
)


class WeightsError(RunError):
    """The feature network's weights file is missing, damaged or not the one recorded."""


@dataclasses.dataclass(frozen=True)
class ShippedWeights:
    """What the code knows of a shipped weights file: its name (under ``jaxgen/eval/weights``),
    SHA-256 of its bytes, and the test accuracy it was shipped with."""

    file: str
    sha256: str
    test_accuracy: float


SHIPPED = {
    "mnist_embedded": ShippedWeights(
        file=f"lenet_mnist_embedded_v{NET_VERSION}.msgpack",
        sha256="0127443d6ad243cd4d00b085a57be095e18c4ba87b8aba78fadf52b514401e4b",
        test_accuracy=0.986),  # 986 of the 1,000 test digits
}


def _config_record(cfg: FeatureNetConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def weights_bytes(params: Any, dataset: str, test_acc: float,
                  cfg: FeatureNetConfig | None = None) -> bytes:
    """The weights file's content: msgpack of the float32 parameters, the dataset, the recipe and
    the test accuracy. A function of these alone (no time stamps), so equal parameters give an
    equal checksum."""
    cfg = FeatureNetConfig() if cfg is None else cfg
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return flax.serialization.msgpack_serialize({
        "format": "jaxgen-feature-net", "net_version": NET_VERSION, "dataset": dataset,
        "config": _config_record(cfg), "test_accuracy": float(test_acc), "params": params})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_path(dataset: str = "mnist_embedded") -> Path:
    """Where the package keeps the shipped weights of ``dataset``."""
    if dataset not in SHIPPED:
        raise ValueError(f"unknown reference dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return Path(str(importlib.resources.files("jaxgen.eval") / "weights" / SHIPPED[dataset].file))


def _check_params(params: Any, cfg: FeatureNetConfig, where: str) -> None:
    want = jax.eval_shape(lambda: LeNet(cfg.channels, cfg.features, cfg.num_classes).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))["params"])
    want = jax.tree.map(lambda a: tuple(a.shape), want)
    try:
        got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    except Exception:  # noqa: BLE001 - any malformed tree is the same one-line error
        got = None
    if got != want:
        raise WeightsError(f"{where}: parameters do not fit the LeNet of FeatureNetConfig()")


def load_weights(path: str | os.PathLike, sha256: str | None = None,
                 dataset: str = "mnist_embedded") -> FeatureNet:
    """Reads a weights file written by :func:`weights_bytes` (the shipped one, or one from
    ``python -m jaxgen.eval --retrain``).

    Args:
      path: the .msgpack file.
      sha256: the checksum the file must have (hex); None accepts any file.
      dataset: the dataset the file must have been trained on.
    Raises:
      WeightsError (one line) when the file is missing, its checksum differs, or its content is
      not a feature network of this version and architecture.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read the feature network's weights {path}: "
                           f"{e.strerror or e}") from None
    digest = sha256_hex(data)
    if sha256 is not None and digest != sha256:
        raise WeightsError(f"feature network weights {path} have SHA-256 {digest[:16]}..., not the "
                           f"recorded {sha256[:16]}...: the file is damaged or replaced, and "
                           f"fd_lenet from it would not be comparable")
    try:
        d = flax.serialization.msgpack_restore(data)
    except Exception:  # noqa: BLE001 - msgpack raises several types for a damaged file
        d = None
    if not isinstance(d, dict) or d.get("format") != "jaxgen-feature-net":
        raise WeightsError(f"{path} is not a jaxgen feature-network weights file")
    if d.get("net_version") != NET_VERSION or d.get("dataset") != dataset:
        raise WeightsError(f"{path} holds version {d.get('net_version')} for "
                           f"{d.get('dataset')!r}; this jaxgen needs version {NET_VERSION} for "
                           f"{dataset!r}")
    cfg = FeatureNetConfig()
    _check_params(d.get("params"), cfg, str(path))
    return FeatureNet(d["params"], cfg, dataset, float(d["test_accuracy"]), digest)


_LOADED: dict[str, FeatureNet] = {}


def load_feature_net(dataset: str = "mnist_embedded") -> FeatureNet:
    """The shipped network for ``dataset``, checksum verified (once per process). Raises
    ValueError for an unknown dataset and :class:`WeightsError` for a missing or altered file."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown reference dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset not in _LOADED:
        try:
            _LOADED[dataset] = load_weights(shipped_path(dataset), SHIPPED[dataset].sha256, dataset)
        except WeightsError as e:
            raise WeightsError(f"{e}; reinstall jaxgen") from None
    return _LOADED[dataset]


def clear_memory_cache() -> None:
    """Forgets networks loaded in this process (they are read and verified again on next use)."""
    _LOADED.clear()


# ------------------------------------------------------------------------------------ retraining
def retrain(out: str | os.PathLike, dataset: str = "mnist_embedded",
            cfg: FeatureNetConfig | None = None,
            min_accuracy: float = MIN_TEST_ACCURACY) -> tuple[float, str, float]:
    """Trains the network with ``cfg`` on the dataset's training digits and writes its weights
    file to ``out`` (atomically). Returns (test accuracy, SHA-256 of the file, training seconds).

    Args:
      cfg: the recipe; None is the shipped one, ``FeatureNetConfig()``.
    Raises RuntimeError, writing nothing, when the test accuracy is below ``min_accuracy``.
    """
    cfg = FeatureNetConfig() if cfg is None else cfg
    x_tr, y_tr, _, _ = load_dataset(dataset)
    t0 = time.perf_counter()
    params = train_feature_net(x_tr, y_tr, cfg)
    seconds = time.perf_counter() - t0
    acc = test_accuracy(params, dataset, cfg)
    if acc < min_accuracy:
        raise RuntimeError(f"the retrained network reached {acc:.4f} test accuracy on {dataset}, "
                           f"below the required {min_accuracy}; nothing written")
    blob = weights_bytes(params, dataset, acc, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, out)
    return acc, sha256_hex(blob), seconds


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxgen.eval --retrain OUT.msgpack [--epochs N] [--seed S]``."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m jaxgen.eval",
        description="Retrain the LeNet feature network of fd_lenet with jaxgen's recipe and "
                    "write its weights file; prints its test accuracy and SHA-256. The package "
                    "ships such a file (jaxgen.eval.lenet_weights.SHIPPED records its checksum); "
                    "the command says whether the new file is byte-identical to it.")
    p.add_argument("--retrain", metavar="OUT.msgpack", required=True, help="file to write")
    p.add_argument("--dataset", default="mnist_embedded", choices=DATASETS)
    p.add_argument("--epochs", type=int, default=FeatureNetConfig.epochs,
                   help=f"epochs (default {FeatureNetConfig.epochs}, the shipped recipe)")
    p.add_argument("--seed", type=int, default=FeatureNetConfig.seed,
                   help=f"seed (default {FeatureNetConfig.seed}, the shipped recipe)")
    p.add_argument("--min-accuracy", type=float, default=MIN_TEST_ACCURACY,
                   help=f"refuse to write below this test accuracy (default {MIN_TEST_ACCURACY})")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    cfg = dataclasses.replace(FeatureNetConfig(), epochs=args.epochs, seed=args.seed)
    try:  # the output path is checked before a minute of training, not after
        _check_writable(Path(args.retrain))
    except OSError as e:
        print(f"python -m jaxgen.eval: error: cannot write {args.retrain}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    try:
        acc, digest, seconds = retrain(args.retrain, args.dataset, cfg, args.min_accuracy)
    except (RuntimeError, OSError) as e:
        print(f"python -m jaxgen.eval: error: {e}", file=sys.stderr)
        return 1
    shipped = SHIPPED[args.dataset].sha256
    same = ("byte-identical to the shipped weights" if digest == shipped
            else f"differs from the shipped weights ({shipped[:16]}...)")
    print(f"wrote {args.retrain}: test accuracy {acc:.4f} on {args.dataset}, sha256 {digest} "
          f"({same}), trained in {seconds:.1f} s")
    return 0


def _check_writable(out: Path) -> None:
    """Raises OSError unless a file can be written at ``out`` (creating its parent folders)."""
    if out.is_dir():
        raise IsADirectoryError(21, "is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    probe.write_bytes(b"")
    probe.unlink()
