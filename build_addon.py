"""Build the installable Blender extension zip: `python build_addon.py [--out dist/]`.

The zip holds, at its root (the extension layout Blender's installer expects):
  blender_manifest.toml, __init__.py and the add-on's modules   (from blender_addon/)
  bundled/backend/...                                            (the backend package, with assets/)
  bundled/torch.txt                                              (the torch pin: TORCH_PIN)
  bundled/requirements.txt                                       (pyproject's other dependencies,
                                                                  each with the tested upper bound)

"Set up backend" pip-installs the torch pin first (CPU or the CUDA build the user picks), then
bundled/requirements.txt, into one venv per user; the add-on adds bundled/ to its import path.
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


# torch is installed first and pinned (tools/setup.sh pins the same version): a bare `torch`
# would pull a multi-GB CUDA build on Linux and a CPU-only one on Windows.
TORCH_PIN = "torch==2.13.0"
# Upper bounds of the versions the backend is tested with (the next major version is untested).
TESTED_BELOW = {"numpy": "3", "scipy": "2", "potpourri3d": "2", "robust-laplacian": "2", "transformers": "6",
                "soundfile": "1", "platformdirs": "5", "plyfile": "2", "cholespy": "3"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


def requirements() -> list[str]:
    """pyproject's dependencies without torch, each bounded: its lower bound from pyproject and
    the tested upper bound (TESTED_BELOW) unless pyproject gives one."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    out = []
    for req in data["project"]["dependencies"]:
        name = _name(req)
        if name == "torch":
            continue
        if "<" not in req and name in TESTED_BELOW:
            req = f"{req},<{TESTED_BELOW[name]}" if re.search(r"[<>=~]", req) else f"{req}<{TESTED_BELOW[name]}"
        out.append(req)
    return out


def _files(base: Path):
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if any(part in EXCLUDE_DIRS for part in rel.parts) or not p.is_file():
            continue
        if any(fnmatch.fnmatch(p.name, pat) for pat in EXCLUDE_FILES):
            continue
        yield p, rel


# Files the add-on carries a copy of (numpy-only backend code it runs inside Blender): the build
# refuses a copy that differs from its source, so the zip never ships a stale one.
SHARED_COPIES = {"result_file.py": BACKEND / "result_file.py"}


def check_copies() -> None:
    for name, src in SHARED_COPIES.items():
        if (ADDON / name).read_bytes() != src.read_bytes():
            raise SystemExit(f"blender_addon/{name} differs from {src}: copy it over (cp {src} blender_addon/{name})")


def entries() -> tuple[list[tuple[str, bytes]], list[str]]:
    """(zip entries (name, bytes), skipped forbidden paths)."""
    check_copies()
    out, skipped = [], []
    for p, rel in _files(ADDON):
        out.append((rel.as_posix(), p.read_bytes()))
    for p, rel in _files(BACKEND):
        name = f"{BUNDLE}/backend/{rel.as_posix()}"
        if FORBIDDEN.search(rel.as_posix()):
            skipped.append(name)
            continue
        out.append((name, p.read_bytes()))
    reqs = ("# Installed into the backend venv by 'Set up backend' after torch.txt (from pyproject.toml,\n"
            "# with the tested upper bounds of build_addon.TESTED_BELOW)\n" + "\n".join(requirements()) + "\n")
    out.append((f"{BUNDLE}/requirements.txt", reqs.encode("utf-8")))
    torch = ("# Installed first by 'Set up backend', from the index of the PyTorch build chosen in the\n"
             "# preferences (CPU or CUDA); the same pin as tools/setup.sh\n" + TORCH_PIN + "\n")
    out.append((f"{BUNDLE}/torch.txt", torch.encode("utf-8")))
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
