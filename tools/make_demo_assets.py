"""Rebuild the demo assets shipped in backend/assets (run from the repo root, needs ../shared).

- demo_head.obj: the ICT FaceKit neutral head (MIT, see ICT_FACEKIT_LICENSE) with a fixed identity
  mix, in metres, y up, facing +z. Not one of the identities the default model trained on.
- demo_head_lips.txt, demo_head_upper.txt: its lip and upper-face masks (0-based vertex indices,
  training.synth.topology.ict_masks), for `python -m training.articulation` on the demo head.
- demo_voice.wav: a LibriVox recording (public domain) from pocketsphinx's test data (BSD-2,
  see DEMO_VOICE_LICENSE), 16 kHz mono.
"""
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ASSETS = ROOT / "backend" / "assets"


def main():
    with np.load(SHARED / "ict_facekit" / "ict_facekit_face_head_neck.npz", allow_pickle=False) as z:
        coeffs = np.zeros(len(z["identity_deltas"]))
        coeffs[:4] = [0.8, -0.6, 0.5, -0.4]  # a fixed, clearly non-average face
        verts = (z["neutral"] + np.tensordot(coeffs, z["identity_deltas"], axes=1)) * 0.01
        faces = z["faces"]
    with open(ASSETS / "demo_head.obj", "w") as fh:
        fh.write("# ICT FaceKit head (MIT licence, USC ICT), metres, y up, facing +z\n")
        fh.writelines(f"v {x:.6f} {y:.6f} {w:.6f}\n" for x, y, w in verts)
        fh.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)
    import sys

    sys.path.insert(0, str(ROOT))
    from training.synth.topology import ict_masks, load_ict

    lips, upper = ict_masks(load_ict(SHARED / "ict_facekit" / "ict_facekit_face_head_neck.npz"))
    for name, idx in (("lips", lips), ("upper", upper)):
        (ASSETS / f"demo_head_{name}.txt").write_text(",".join(map(str, idx)) + "\n")
    shutil.copy(SHARED / "ict_facekit" / "LICENSE", ASSETS / "ICT_FACEKIT_LICENSE")
    shutil.copy(SHARED / "speech" / "sense_and_sensibility_01_austen_64kb-0890.wav", ASSETS / "demo_voice.wav")
    text = (SHARED / "speech" / "copyright").read_text()
    (ASSETS / "DEMO_VOICE_LICENSE").write_text(
        "demo_voice.wav: LibriVox recording of Jane Austen's Sense and Sensibility (public domain),\n"
        "as distributed in pocketsphinx's test data under the licence below.\n"
        "Transcript: \"unless to be rather cold hearted and rather selfish is to be ill disposed\"\n\n" + text)


if __name__ == "__main__":
    main()
