"""Opening prepared TFDS datasets with ``tfds.data_source`` (ArrayRecord, no TensorFlow needed)."""
from __future__ import annotations

import os
from typing import Any


def default_data_dir(data_dir: str = "") -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def open_split(name: str, split: str, data_dir: str = "", alternative: str = "") -> Any:
    """A random-access TFDS data source, or a one-line ValueError saying how to prepare it."""
    import tensorflow_datasets as tfds

    data_dir = default_data_dir(data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown TFDS dataset {name!r} (no such dataset is registered in "
                         "tensorflow-datasets)") from None
    except Exception as e:  # noqa: BLE001 - TFDS raises several types for "not prepared"
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "split" in text.lower() and "unknown" in text.lower():
            raise ValueError(f"TFDS dataset {name!r} has no split {split!r} ({text})") from None
        raise ValueError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in {data_dir}; prepare it "
            f"once on a machine with network access: pip install 'jaxgen[prepare]' && "
            f"tfds build {name} --data_dir {data_dir}"
            + (f"; or, with no TFDS, {alternative}" if alternative else "")) from None
