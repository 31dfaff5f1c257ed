"""Where jaxgen keeps files it builds once per machine (compiled CPU kernels)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$JAXGEN_CACHE`` when set, else ``~/.cache/jaxgen``."""
    return Path(os.environ.get("JAXGEN_CACHE") or Path.home() / ".cache" / "jaxgen").expanduser()
