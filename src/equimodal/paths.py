"""Where shared data and caches live (no absolute paths in code)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path | None:
    """Return the ``shared/data`` folder that sits beside the project, if any.

    Looks at ``$EQUIMODAL_SHARED_DATA`` first, then for ``../shared/data`` next to the current
    directory or any of its parents, then next to the installed source tree.
    """
    env = os.environ.get("EQUIMODAL_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for parent in [start, *start.parents]:
            cand = parent / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def cache_dir() -> Path:
    """Folder for prepared features (``$EQUIMODAL_CACHE`` or ``~/.cache/equimodal``)."""
    p = Path(os.environ.get("EQUIMODAL_CACHE", Path.home() / ".cache" / "equimodal"))
    p.mkdir(parents=True, exist_ok=True)
    return p
