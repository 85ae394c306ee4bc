"""`python -m backend batch MANIFEST --out DIR`: animate many (mesh, audio, options) rows.

One warm model and one operator computation per mesh (rows are grouped by mesh; operators also
land in the disk cache), a progress bar with an ETA on stderr, resumable (a row whose output
already exists and reads back is skipped: outputs appear atomically, so an existing one is
complete), and a failed row is reported while the others still run.

Under `torchrun --nproc_per_node=N [--nnodes ...]` the rows are split across the processes:
torch.distributed (gloo on CPU, NCCL on GPUs) gives the rank and world size, each rank runs a
contiguous share of the mesh-grouped rows on its own device (`cuda:LOCAL_RANK`), and the ranks'
summaries are gathered with `all_gather_object` at the end (which is also the final barrier).

Manifest: CSV with a header row, or JSON lines (one object per line; blank lines and lines
starting with `#` are skipped). Columns/keys: `mesh`, `audio` (required), and optionally `out`,
`checkpoint`, `fps`, `start`, `duration`, `normalize`, `units`, `dtype`, `head_scale`; an empty
cell means the command-line default. Relative `mesh`/`audio`/`checkpoint` paths are relative to
the manifest's folder, `out` to the output folder. Without `out` a row writes
`<mesh stem>_<audio stem>_<8 hex of the row's inputs>.npz`, so editing a row's options makes a
new output instead of silently reusing the old one. Format: docs/protocol.md.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadRequest, ScanTalkError
from .options import animate_options

log = logging.getLogger("backend.batch")

COLUMNS = ("mesh", "audio", "out", "checkpoint", "fps", "start", "duration", "normalize", "units", "dtype",
           "head_scale")
SUMMARY = "batch_summary.json"


@dataclass
class Row:
    index: int  # 1-based position in the manifest
    mesh: str = ""
    audio: str = ""
    out: str = ""
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)
    error: str | None = None  # set when the row itself is invalid


def read_manifest(path) -> list[dict]:
    """Raw rows (dicts of strings or JSON values); BadRequest for an unreadable manifest."""
    path = Path(path)
    if not path.is_file():
        raise BadRequest(f"manifest not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise BadRequest(f"{path.name}: a CSV manifest needs a header row ({', '.join(COLUMNS)})")
        unknown = [c for c in reader.fieldnames if c and c.strip() not in COLUMNS]
        if unknown:
            raise BadRequest(f"{path.name}: unknown column(s) {unknown}; known: {', '.join(COLUMNS)}")
        for rec in reader:
            rows.append({k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in rec.items() if k})
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise BadRequest(f"{path.name} line {n}: not JSON ({exc}); a manifest is CSV (.csv) "
                                 f"or JSON lines") from None
            if not isinstance(rec, dict):
                raise BadRequest(f"{path.name} line {n}: each line must be a JSON object")
            unknown = [k for k in rec if k not in COLUMNS]
            if unknown:
                raise BadRequest(f"{path.name} line {n}: unknown key(s) {unknown}; known: {', '.join(COLUMNS)}")
            rows.append(rec)
    if not rows:
        raise BadRequest(f"{path.name} has no rows")
    return rows


def _blank(v):
    return v is None or (isinstance(v, str) and not v.strip())


def plan(manifest, out_dir, defaults: dict) -> list[Row]:
    """Validated rows with resolved paths and output names. An invalid row keeps its error and
    is reported as failed; it does not stop the others."""
    manifest = Path(manifest)
    base, out_dir = manifest.resolve().parent, Path(out_dir)
    rows, seen = [], {}
    for i, rec in enumerate(read_manifest(manifest), 1):
        row = Row(index=i)
        try:
            for key in ("mesh", "audio"):
                if _blank(rec.get(key)):
                    raise BadRequest(f"'{key}' is empty")
            row.mesh = str(base / str(rec["mesh"]).strip())
            row.audio = str(base / str(rec["audio"]).strip())
            ck = rec.get("checkpoint")
            row.checkpoint = str(base / str(ck).strip()) if not _blank(ck) else defaults.get("checkpoint")
            merged = {k: (defaults.get(k) if _blank(rec.get(k)) else rec.get(k))
                      for k in ("fps", "start", "duration", "normalize", "units", "dtype", "head_scale")}
            merged["device"] = defaults.get("device", "auto")
            row.options = animate_options(**merged)
            row.options.pop("device")
            if not _blank(rec.get("out")):
                out = Path(str(rec["out"]).strip())
                if out.suffix != ".npz":
                    out = out.with_name(out.name + ".npz")
            else:
                # the default head scale stays out of the name, so a batch begun before the option
                # existed resumes with the same outputs
                named = {k: v for k, v in row.options.items() if not (k == "head_scale" and v == 1.0)}
                key = json.dumps([row.mesh, row.audio, row.checkpoint, named], sort_keys=True)
                digest = hashlib.sha1(key.encode()).hexdigest()[:8]
                out = Path(f"{Path(row.mesh).stem}_{Path(row.audio).stem}_{digest}.npz")
            row.out = str(out if out.is_absolute() else out_dir / out)
            if row.out in seen:
                raise BadRequest(f"writes the same output as row {seen[row.out]} ({row.out})")
            seen[row.out] = i
        except ScanTalkError as exc:
            row.error = str(exc)
        rows.append(row)
    return rows


def _finished(path: str) -> bool:
    from .result_file import open_result

    if not os.path.isfile(path):
        return False
    try:
        with open_result(path) as r:
            return r.n_frames > 0
    except Exception:  # unreadable: written by something else, or damaged; redo it
        return False


def _fmt(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class ProgressBar:
    """One line on stderr: rows done, audio seconds done, elapsed and ETA (by audio seconds)."""

    def __init__(self, total_rows: int, total_audio: float, prefix: str = "", stream=None):
        self.total_rows, self.total_audio = total_rows, max(total_audio, 1e-9)
        self.prefix, self.stream = prefix, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.audio_done = 0.0  # seconds of audio animated by this run (not skipped rows)
        self.audio_skipped = 0.0
        self.rows_done = self.failed = self.skipped = 0
        self._last = 0.0

    def update(self, current_audio: float = 0.0, label: str = "", force: bool = False):
        now = time.perf_counter()
        if not force and now - self._last < (0.5 if self.tty else 10.0):
            return
        self._last = now
        done = self.audio_done + current_audio
        left = self.total_audio - self.audio_skipped - done
        elapsed = now - self.t0
        eta = f"ETA {_fmt(left * elapsed / done)}" if done > 0 else "ETA --"
        frac = (done + self.audio_skipped) / self.total_audio
        width = 24
        bar = "#" * int(width * min(frac, 1)) + "-" * (width - int(width * min(frac, 1)))
        line = (f"{self.prefix}[{bar}] {100 * frac:5.1f}% {self.rows_done}/{self.total_rows} rows "
                f"({self.skipped} skipped, {self.failed} failed) {_fmt(elapsed)} {eta} {label}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _audio_seconds(row: Row) -> float:
    """The row's clip length from the audio header (for the ETA); 0 when unknown."""
    from .audio_io import audio_duration

    try:
        total = audio_duration(row.audio) - max(row.options.get("start") or 0.0, 0.0)
    except Exception:
        return 0.0
    d = row.options.get("duration")
    return max(0.0, min(total, d) if d else total)


def _distributed(device: str):
    """(dist module or None, rank, world size, device for this rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 0, 1, device
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    # gloo carries the summary objects (and everything on CPU); rows can take hours, so the
    # final gather must not time out while a slower rank finishes.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(days=7))
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return dist, dist.get_rank(), dist.get_world_size(), device


def _share(rows: list[Row], rank: int, world: int) -> list[Row]:
    """A contiguous slice of the mesh-grouped rows: each mesh's operators mostly on one rank."""
    n = len(rows)
    return rows[rank * n // world:(rank + 1) * n // world]


def run_batch(manifest, out_dir, checkpoint=None, device: str = "auto", fps=None, start=None, duration=None,
              normalize=None, units=None, dtype=None, cache_dir=None, stream=None, head_scale=None) -> dict:
    """Run the manifest; returns the summary (gathered over all ranks under torchrun)."""
    t0 = time.perf_counter()
    defaults = {"checkpoint": checkpoint, "device": device, "fps": fps, "start": start, "duration": duration,
                "normalize": normalize, "units": units, "dtype": dtype, "head_scale": head_scale}
    rows = plan(manifest, out_dir, defaults)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    dist, rank, world, device = _distributed(animate_options(device=device)["device"])
    # group by mesh (stable): one operator computation per mesh, one model for all rows
    rows.sort(key=lambda r: (r.mesh, r.index))
    mine = _share(rows, rank, world)
    results = []
    prefix = f"rank {rank}/{world} " if world > 1 else ""
    bar = ProgressBar(len(mine), sum(_audio_seconds(r) for r in mine if r.error is None), prefix, stream)
    session = None
    for row in mine:
        rec = {"row": row.index, "mesh": row.mesh, "audio": row.audio, "out": row.out, "rank": rank}
        if row.error is not None:
            rec.update(status="failed", error=row.error)
        elif _finished(row.out):
            rec.update(status="skipped")
            bar.skipped += 1
            bar.audio_skipped += _audio_seconds(row)
        else:
            if session is None:
                from .inference import Session

                session = Session(cache_dir=cache_dir)
            from .inference import animate_to_file

            seconds = _audio_seconds(row)
            label = f"row {row.index}: {Path(row.audio).name}"
            t = time.perf_counter()
            try:
                res = animate_to_file(row.mesh, row.audio, row.out, checkpoint=row.checkpoint, device=device,
                                      session=session, progress=lambda s, f, m: bar.update(seconds * f, label),
                                      **row.options)
                rec.update(status="done", frames=res.frames, seconds=round(time.perf_counter() - t, 3),
                           audio_seconds=round(seconds, 3), operators=res.meta["operators"])
                bar.audio_done += seconds
            except ScanTalkError as exc:
                rec.update(status="failed", error=str(exc))
            except Exception as exc:  # a bug on one row must not lose the others
                log.error("row %d failed:\n%s", row.index, traceback.format_exc())
                rec.update(status="failed", error=f"internal error ({type(exc).__name__}: {exc})")
        if rec["status"] == "failed":
            bar.failed += 1
            print(f"{prefix}row {row.index} failed ({Path(row.mesh).name}, {Path(row.audio).name}): "
                  f"{rec['error']}", file=bar.stream)
        bar.rows_done += 1
        results.append(rec)
        bar.update(0.0, f"row {row.index} {rec['status']}", force=True)
    bar.close()

    if dist is not None:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        # A rank that tears its group down while a peer is still inside the gather aborts that
        # peer ("terminate called without an active exception", SIGABRT): meet once more first.
        dist.barrier()
        dist.destroy_process_group()
        results = [r for part in gathered for r in part]
    results.sort(key=lambda r: r["row"])
    elapsed = time.perf_counter() - t0
    done = [r for r in results if r["status"] == "done"]
    summary = {
        "rows": len(results), "done": len(done),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "failed": sum(r["status"] == "failed" for r in results),
        "processes": world, "seconds": round(elapsed, 3),
        "audio_seconds": round(sum(r.get("audio_seconds", 0.0) for r in done), 3),
        "clips_per_hour": round(3600 * len(done) / elapsed, 2) if done else 0.0,
        "failures": [{k: r[k] for k in ("row", "mesh", "audio", "error")} for r in results if r["status"] == "failed"],
        "results": results,
    }
    if rank == 0:
        tmp = Path(out_dir) / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(Path(out_dir) / SUMMARY)
    summary["rank"] = rank
    return summary


def main(args) -> int:
    summary = run_batch(args.manifest, args.out, checkpoint=args.checkpoint, device=args.device, fps=args.fps,
                        start=args.start, duration=args.duration, normalize=args.normalize, units=args.units,
                        dtype=args.dtype, cache_dir=args.cache_dir, head_scale=args.head_scale)
    if summary["rank"] == 0:
        print(f"batch: {summary['rows']} rows: {summary['done']} done, {summary['skipped']} skipped "
              f"(already finished), {summary['failed']} failed; {summary['seconds']:.1f} s, "
              f"{summary['clips_per_hour']:.1f} clips/hour on {summary['processes']} process(es); "
              f"summary in {Path(args.out) / SUMMARY}")
        for f in summary["failures"]:
            print(f"  row {f['row']}: {f['error']}")
    return 1 if summary["failed"] else 0

