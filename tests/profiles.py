"""Profiles rewritten as a hostile author would, for the tests that check
they are refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def rewrite_profile(src: Path, dst: Path, meta_edit: Callable[[dict], object] | None = None,
                    arrays_edit: Callable[[dict[str, np.ndarray]], object] | None = None) -> Path:
    """Copy a profile to dst with its JSON header and arrays edited."""
    with safe_open(str(src), "np") as fh:
        meta = json.loads(fh.metadata()["bastion"])
        arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    save_file(arrays, str(dst), metadata={"bastion": json.dumps(meta)})
    return dst
