"""Command line: `python -m backend animate | batch | serve | doctor`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

PREVIEW_SECONDS = 120.0

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="ScanTalk: make any face mesh speak.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("animate", help="predict per-frame vertex offsets for a mesh speaking an audio file")
    a.add_argument("--mesh", required=True, help="neutral face mesh: .ply, .obj or .npz (y up, facing +z)")
    a.add_argument("--audio", required=True, help="speech: wav, flac, ogg or mp3, any rate or channels")
    a.add_argument("--out", required=True, help="output .npz (offsets [T,V,3] float32, fps, meta)")
    a.add_argument("--checkpoint", help="our .pt or an official ScanTalk .pth.tar (default: bundled model)")
    a.add_argument("--fps", type=float, help="output frame rate (default: the model's native rate)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.add_argument("--start", type=float, default=0.0, help="seconds into the audio to start")
    a.add_argument("--duration", type=float, help="seconds of audio to use (default: to the end)")
    a.add_argument("--normalize", default="auto", choices=["auto", "none"],
                   help="auto: detect units and centre the head like the training data; none: as is")
    a.add_argument("--units", choices=["m", "dm", "cm", "mm", "in"], help="force the mesh's units")
    a.add_argument("--head-scale", type=float, metavar="K",
                   help="how many times life size the head is in its units (a sculpt made at 2x: 2); "
                        "the model sees it at life size and its motion comes back scaled with it (default 1)")
    a.add_argument("--cache-dir", help="operator cache folder (default: $SCANTALK_CACHE_DIR or user cache)")
    a.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="storage of the offsets; float16 halves the file (error: docs/protocol.md)")
    a.add_argument("--preview", help="also write a PNG contact sheet of a few frames here")
    a.add_argument("--rig-keys", help="also solve the weights of a shape-key rig (npz: names, deltas [K,V,3], "
                                      "ranges [K,2]; docs/protocol.md) and add them to the result")
    a.add_argument("--rig-csv", help="with --rig-keys: also write the weights as a Live Link Face CSV here")
    a.add_argument("--rig-json", help="with --rig-keys: also write the weights and the fit report as JSON here")
    a.add_argument("--rig-smooth", type=float, help="with --rig-keys: temporal smoothness (default 0.001)")
    a.add_argument("--compact", type=float, metavar="MAX_ERROR_MM",
                   help="also add a Compact basis (K shape keys + weights, docs/protocol.md) keeping every "
                        "vertex of every frame within this many mm of the offsets")
    a.add_argument("--compact-k-max", type=int, help="with --compact: at most this many basis keys (default 64)")
    a.add_argument("--compact-strength", type=float, help="with --compact: scale the motion first (default 1)")
    a.add_argument("--compact-smoothing", type=float,
                   help="with --compact: Gaussian smoothing of the weights along time, sigma in frames (default 0)")

    b = sub.add_parser("batch", help="animate every (mesh, audio, options) row of a CSV or JSON-lines manifest",
                       description="Rows: mesh, audio [, out, checkpoint, fps, start, duration, normalize, "
                                   "units, dtype, head_scale]; see docs/protocol.md. Resumable: finished "
                                   "outputs are skipped. Under torchrun the rows are split across the "
                                   "processes. Exit code 1 if any row failed.")
    b.add_argument("manifest", help="a .csv (with a header row) or JSON-lines file")
    b.add_argument("--out", required=True, help="output folder (results + batch_summary.json)")
    b.add_argument("--checkpoint", help="default checkpoint for rows that name none")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--fps", type=float, help="default output frame rate")
    b.add_argument("--start", type=float, help="default start (s)")
    b.add_argument("--duration", type=float, help="default duration (s)")
    b.add_argument("--normalize", choices=["auto", "none"])
    b.add_argument("--units", choices=["m", "dm", "cm", "mm", "in"])
    b.add_argument("--head-scale", type=float, metavar="K", help="default head scale (see animate --help)")
    b.add_argument("--dtype", choices=["float32", "float16"])
    b.add_argument("--cache-dir")

    s = sub.add_parser("serve", help="JSON-lines worker on stdin/stdout (see docs/protocol.md)")
    s.add_argument("--cache-dir")

    d = sub.add_parser("doctor", help="versions, device, CUDA, cache location and size")
    d.add_argument("--cache-dir")
    d.add_argument("--json", action="store_true")
    return p


def _animate(args) -> int:
    from .errors import BadRequest
    from .options import animate_options

    # Refuse bad numbers before anything heavy (torch) is imported.
    if (args.rig_csv or args.rig_json or args.rig_smooth is not None) and not args.rig_keys:
        raise BadRequest("--rig-csv, --rig-json and --rig-smooth need --rig-keys")
    if args.rig_keys:
        from .rig_solve import load_keys, rig_options

        rig_options({"keys": args.rig_keys, "smooth": args.rig_smooth})
        load_keys(args.rig_keys)  # a bad keys file fails before the model runs
    opts = animate_options(fps=args.fps, start=args.start, duration=args.duration, device=args.device,
                           normalize=args.normalize, units=args.units, dtype=args.dtype,
                           head_scale=args.head_scale)
    compact = None
    if args.compact is not None:
        from .options import compact_options

        compact = compact_options({"max_error_mm": args.compact, "k_max": args.compact_k_max,
                                   "strength": args.compact_strength, "smoothing": args.compact_smoothing})
    elif args.compact_k_max is not None or args.compact_strength is not None or args.compact_smoothing is not None:
        raise BadRequest("--compact-k-max, --compact-strength and --compact-smoothing need --compact MAX_ERROR_MM")
    from .inference import Session, animate_to_file

    def progress(stage, fraction, message):
        print(f"[{fraction * 100:5.1f}%] {stage}: {message}", file=sys.stderr)

    result = animate_to_file(args.mesh, args.audio, args.out, checkpoint=args.checkpoint, fps=opts["fps"],
                             device=opts["device"], start=opts["start"], duration=opts["duration"],
                             normalize=opts["normalize"], units=opts["units"], dtype=opts["dtype"],
                             head_scale=opts["head_scale"], session=Session(cache_dir=args.cache_dir),
                             progress=progress)
    t = result.meta["timings"]
    print(f"wrote {result.path}: {result.frames} frames at {result.fps:g} fps, "
          f"{result.vertices} vertices ({result.meta['device']}, {t['total']:.2f} s, "
          f"operators {result.meta['operators']}, {result.meta['decode_ms_per_frame']:.1f} ms/frame decode)")
    if args.rig_keys:
        from .rig_solve import format_report, rig_options, solve_result_file

        ro = rig_options({"keys": args.rig_keys, "smooth": args.rig_smooth})
        fit = solve_result_file(args.out, ro["keys_path"], smooth=ro["smooth"], csv_path=args.rig_csv,
                                json_path=args.rig_json)
        print(f"added rig weights to {args.out}: {format_report(fit.report)}")
    if compact is not None:
        from .compact import compact_result_file

        rep = compact_result_file(args.out, max_error_mm=compact["max_error_mm"], k_max=compact["k_max"],
                                  strength=compact["strength"], smoothing=compact["smoothing"], device=opts["device"])
        print(f"added a Compact basis to {args.out}: {rep['k']} keys, max error {rep['max_error_mm']:.4f} mm "
              f"({'within' if rep['reached'] else 'ABOVE'} {rep['tolerance_mm']:g} mm), {rep['seconds']:.1f} s")
    if args.preview:
        from .mesh_io import load_mesh
        from .preview import contact_sheet
        from .result_file import open_result

        verts, faces = load_mesh(args.mesh)
        with open_result(result.path) as r:
            # A long clip is previewed over its first PREVIEW_SECONDS: the sheet reads those
            # frames only, never the whole result.
            n = min(r.n_frames, max(2, int(PREVIEW_SECONDS * r.fps)))
            offsets = r.frames(0, n)
        duration = args.duration if n == result.frames else n / result.fps
        contact_sheet(verts, faces, offsets, result.fps, args.preview, audio=args.audio,
                      start=args.start, duration=duration)
        print(f"wrote preview {args.preview}" + (f" (first {n / result.fps:.0f} s)" if n < result.frames else ""))
    return 0


def main(argv=None) -> int:
    from .errors import ScanTalkError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "animate":
            return _animate(args)
        if args.command == "batch":
            from .batch import main as batch_main
            from .options import animate_options

            animate_options(fps=args.fps, start=args.start, duration=args.duration)  # refuse bad defaults early
            return batch_main(args)
        if args.command == "serve":
            from .worker import serve

            return serve(args.cache_dir)
        if args.command == "doctor":
            from .doctor import format_report, report

            info = report(args.cache_dir)
            print(json.dumps(info, indent=2) if args.json else format_report(info))
            return 0
    except ScanTalkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1
