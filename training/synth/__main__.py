"""python -m training.synth --out DIR [--subjects N --sentences M --seed S --fps 30 --workers W
                                   --languages all|en|LIST --english-share 0.4]"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from .generate import (DEFAULT_ENGLISH_SHARE, DEFAULT_FESTIVAL_SHARE, DEFAULT_FLITE_SHARE,
                       DEFAULT_HOLDOUT_FAMILY, generate)
from .topology import FAMILIES
from .tts import FESTIVAL_VOICES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.synth", description=(
        "Generate a synthetic talking-head dataset (general layout: meta.json, clips.json, templates/, "
        "masks/, wav/, vertices/). Deterministic for a seed."))
    ap.add_argument("--out", required=True, help="output folder (new or empty)")
    ap.add_argument("--subjects", type=int, default=12, help="number of identities (default 12)")
    ap.add_argument("--sentences", type=int, default=20, help="sentences per subject (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    ap.add_argument("--ict", default=None, help="path to ict_facekit_face_head_neck.npz "
                    "(default: ../shared/data/ict_facekit/ or $SCANTALK_ICT_NPZ)")
    ap.add_argument("--holdout-family", default=DEFAULT_HOLDOUT_FAMILY, choices=sorted(FAMILIES),
                    help="topology family used by test subjects only (default %(default)s)")
    ap.add_argument("--families", default=None,
                    help="comma-separated families for train/val subjects, repeat one to weight it "
                         "(default remeshed,ict_face,remeshed,ict_narrow,ict_full)")
    ap.add_argument("--languages", default="all",
                    help="all (default: English + 27 espeak-ng languages, hu/ta/sw test-only), en, or a "
                         "comma-separated list such as en,de,fr,hu")
    ap.add_argument("--english-share", type=float, default=DEFAULT_ENGLISH_SHARE,
                    help="probability that a clip is English (Harvard sentences, espeak-ng + flite); "
                         "default %(default)s")
    ap.add_argument("--flite-share", type=float, default=DEFAULT_FLITE_SHARE,
                    help="of the English clips, the share spoken by flite; default %(default)s")
    ap.add_argument("--festival-share", type=float, default=DEFAULT_FESTIVAL_SHARE,
                    help="of the English clips, the share spoken by festival when installed (espeak-ng "
                         "speaks the rest); default %(default)s")
    ap.add_argument("--festival-voices", default=None,
                    help="comma-separated festival voices that may speak (default: every installed one "
                         "of " + ", ".join(FESTIVAL_VOICES) + "); cmu_us_slt_arctic_hts alone gives "
                         "synth 1.2's voices")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier output in --out")
    args = ap.parse_args(argv)
    warnings.simplefilter("always")
    t0 = time.time()
    try:
        out = generate(args.out, args.subjects, args.sentences, args.seed, fps=args.fps,
                       workers=args.workers, ict_path=args.ict, holdout_family=args.holdout_family,
                       families=[f.strip() for f in args.families.split(",") if f.strip()] if args.families else None,
                       overwrite=args.overwrite, languages=args.languages,
                       english_share=args.english_share, flite_share=args.flite_share,
                       festival_share=args.festival_share,
                       festival_voices=[v.strip() for v in args.festival_voices.split(",") if v.strip()]
                       if args.festival_voices is not None else None, log=lambda m: print(f"[synth {time.time() - t0:6.1f}s] {m}", flush=True))
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
