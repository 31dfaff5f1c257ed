"""Metric writers: a JSONL file and TensorBoard event files (tensorboardX), process 0 only."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


class MetricWriter:
    """Writes scalar metrics to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``.

    Every line of the JSONL file is ``{"step": int, "split": str, name: float, ...}``. Writers on
    processes other than 0 do nothing, so multi-host runs log once.

    A run started or resumed at step ``resume_step`` first drops the JSONL rows past that step
    (they came from the part of an interrupted run that is trained again, also one killed
    before its first checkpoint) and tells TensorBoard to purge its events past that step, so
    neither holds two values for one step.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int = 0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            _truncate_jsonl(path, resume_step)  # rows a killed run logged past its checkpoint
            self._jsonl = open(path, "a", encoding="utf-8")
            from tensorboardX import SummaryWriter  # imported lazily: heavy-ish
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split,
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))

    def write_image(self, step: int, tag: str, png_path: str) -> None:
        """Logs a PNG file (e.g. a sample grid) as a TensorBoard image."""
        if self.enabled:
            from PIL import Image
            image = np.asarray(Image.open(png_path).convert("RGB"))
            self._tb.add_image(tag, image, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _truncate_jsonl(path: str, step: int) -> None:
    """Keeps the rows of ``path`` whose step is at most ``step`` (atomic rewrite)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a half-written last line of a killed run
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(tmp, path)
