"""Offline stand-ins for "Set up backend" tests: a bundle and wheels pip installs with --no-index."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path


def make_wheel(folder, name: str, version: str, payload: int = 0) -> Path:
    """A minimal pure-Python wheel `name==version` (with `payload` incompressible bytes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mod = name.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = {f"{mod}/__init__.py": f"__version__ = {version!r}\n".encode(),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: scantalk-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if payload:
        files[f"{mod}/payload.bin"] = os.urandom(payload)
    record = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n, data in files.items():
            zf.writestr(n, data)
        zf.writestr(f"{dist}/RECORD", record)
    return path


def make_bundle(folder, reqs=("scantalk-dep>=1,<2",), torch_pin: str | None = "faketorch==2.13.0") -> str:
    """A bundle like build_addon's: backend/ (empty package), requirements.txt and torch.txt."""
    b = Path(folder) / "bundled"
    (b / "backend").mkdir(parents=True, exist_ok=True)
    (b / "backend" / "__init__.py").write_text("")
    (b / "requirements.txt").write_text("\n".join(reqs) + "\n")
    if torch_pin:
        (b / "torch.txt").write_text(f"# pin\n{torch_pin}\n")
    return str(b)


def make_wheels(folder) -> list[Path]:
    """The wheels make_bundle's requirements need: faketorch (stands in for torch) and scantalk-dep."""
    return [make_wheel(folder, "faketorch", "2.13.0", payload=300_000),
            make_wheel(folder, "scantalk-dep", "1.2", payload=50_000)]
