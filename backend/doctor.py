"""Environment report: versions, device, CUDA, operator cache."""
from __future__ import annotations

import platform
import sys

from . import __version__


def report(cache=None) -> dict:
    import numpy
    import scipy
    import torch

    from .inference import DEFAULT_CHECKPOINT
    from .operator_cache import cache_usage

    folder, entries, size = cache_usage(cache)
    cuda = torch.cuda.is_available()
    try:  # the installed version, without importing transformers (seconds)
        from importlib.metadata import PackageNotFoundError, version

        tf = version("transformers")
    except PackageNotFoundError:
        tf = None
    return {
        "scantalk_backend": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "transformers": tf,
        "device": "cuda" if cuda else "cpu",
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "default_model": str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else None,
        "cache_dir": str(folder),
        "cache_entries": entries,
        "cache_bytes": size,
    }


def format_report(info: dict) -> str:
    width = max(map(len, info))
    lines = []
    for k, v in info.items():
        if k == "cache_bytes":
            v = f"{v / 2**20:.1f} MB"
        lines.append(f"{k.ljust(width)}  {v}")
    return "\n".join(lines)
