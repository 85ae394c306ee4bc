"""Build the installable Blender extension zip: `python build_addon.py [--out dist/]`.

The zip holds, at its root (the extension layout Blender's installer expects):
  blender_manifest.toml, __init__.py and the add-on's modules   (from blender_addon/)
  bundled/backend/...                                            (the backend package, with assets/)
  bundled/requirements.txt                                       (pyproject's dependencies)

"Set up backend" pip-installs bundled/requirements.txt into a venv and points it at bundled/.
Pure zipfile: no Blender needed. Data under licences that forbid redistribution (FLAME, BIWI,
VOCASET, official ScanTalk checkpoints) is never bundled, whatever lies in backend/assets.
"""
from __future__ import annotations

import argparse
import fnmatch
import re
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
BACKEND = ROOT / "backend"
BUNDLE = "bundled"

EXCLUDE_DIRS = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
EXCLUDE_FILES = ["*.pyc", "*.pyo", "*.orig", "*.rej", "*~", ".DS_Store", "*.npz.tmp"]
# Never redistributed (licences of FLAME, BIWI, VOCASET and the official ScanTalk weights).
FORBIDDEN = re.compile(r"(flame|biwi|vocaset|voca_|official|scantalk_(biwi|vocaset|multi)|\.pth\.tar$|\.pth$)",
                       re.IGNORECASE)
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # reproducible zips


def manifest_version() -> str:
    data = tomllib.loads((ADDON / "blender_manifest.toml").read_text(encoding="utf-8"))
    for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "license",
                "blender_version_min"):
        if key not in data:
            raise SystemExit(f"blender_manifest.toml lacks '{key}'")
    if len(data["tagline"]) > 64:
        raise SystemExit("blender_manifest.toml: tagline is longer than 64 characters")
    for name, reason in data.get("permissions", {}).items():
        if len(reason) > 64 or reason.endswith("."):
            raise SystemExit(f"blender_manifest.toml: permission '{name}': at most 64 characters, no final period")
    return data["version"]


def requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"]["dependencies"])


def _files(base: Path):
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if any(part in EXCLUDE_DIRS for part in rel.parts) or not p.is_file():
            continue
        if any(fnmatch.fnmatch(p.name, pat) for pat in EXCLUDE_FILES):
            continue
        yield p, rel


def entries() -> tuple[list[tuple[str, bytes]], list[str]]:
    """(zip entries (name, bytes), skipped forbidden paths)."""
    out, skipped = [], []
    for p, rel in _files(ADDON):
        out.append((rel.as_posix(), p.read_bytes()))
    for p, rel in _files(BACKEND):
        name = f"{BUNDLE}/backend/{rel.as_posix()}"
        if FORBIDDEN.search(rel.as_posix()):
            skipped.append(name)
            continue
        out.append((name, p.read_bytes()))
    reqs = "# Installed into the backend venv by 'Set up backend' (from pyproject.toml)\n" + "\n".join(requirements()) + "\n"
    out.append((f"{BUNDLE}/requirements.txt", reqs.encode("utf-8")))
    lic = ROOT / "LICENSE"
    if lic.is_file():
        out.append(("LICENSE", lic.read_bytes()))
    return out, skipped


def build(out_dir: Path | str = ROOT / "dist") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = manifest_version()
    path = out_dir / f"scantalk-{version}.zip"
    files, skipped = entries()
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    tmp.replace(path)
    for s in skipped:
        print(f"not bundled (licence): {s}", file=sys.stderr)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    args = ap.parse_args(argv)
    path = build(args.out)
    with zipfile.ZipFile(path) as zf:
        n = len(zf.namelist())
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB, {n} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
