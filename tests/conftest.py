import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


def shared_path(*parts) -> Path:
    """A file under ../shared, or skip: a user's clone has no shared folder."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared holds licensed test data; only the team's checkout has it)")
    return p


@pytest.fixture(scope="session")
def flame_mesh():
    from backend.mesh_io import load_mesh

    return load_mesh(shared_path("data", "meshes", "FLAME_sample.ply"))
