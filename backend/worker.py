"""`python -m backend serve`: a long-lived worker speaking JSON lines (docs/protocol.md).

The main thread reads requests; one job thread runs `animate` jobs in order, so `cancel`, `ping`
and `shutdown` are answered while a job runs. Models and operators stay warm in a `Session`.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import traceback

from . import __version__
from .errors import BadRequest, Cancelled, ScanTalkError
from .options import animate_options, compact_options, path_field
from .rig_solve import rig_options

log = logging.getLogger("backend.worker")


def animate_request(req: dict) -> dict:
    """The validated options of an animate request (BadRequest on anything wrong)."""
    for key in ("mesh", "audio", "out"):
        path_field(key, req.get(key))
    path_field("checkpoint", req.get("checkpoint"), required=False)
    rig_options(req.get("rig"))
    compact_options(req.get("compact"))
    return animate_options(fps=req.get("fps"), start=req.get("start"), duration=req.get("duration"),
                           device=req.get("device"), normalize=req.get("normalize"), units=req.get("units"),
                           dtype=req.get("dtype"), head_scale=req.get("head_scale"))


class Worker:
    def __init__(self, out, cache_dir=None):
        self.out = out
        self.lock = threading.Lock()
        self.session = None  # created by the job thread: `ready` does not wait for torch
        self.cache_dir = cache_dir
        self.jobs: queue.Queue = queue.Queue()
        self.running_id: str | None = None
        self.pending: set[str] = set()  # animate ids accepted and not yet answered
        self.cancelled: set[str] = set()
        self.thread = threading.Thread(target=self._run_jobs, daemon=True)

    def send(self, **event):
        line = json.dumps(event, default=str)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    # ---- job thread ---------------------------------------------------------------------

    def _run_jobs(self):
        # Import torch and the model code while the client is still getting ready (the `ready`
        # event went out first); a request arriving meanwhile waits only for what is left.
        # transformers is imported only by a checkpoint that needs HuBERT/wav2vec2.
        from .inference import Session

        self.session = Session(cache_dir=self.cache_dir)
        while True:
            req = self.jobs.get()
            if req is None:
                return
            rid = req["id"]
            self.running_id = rid
            try:
                if rid in self.cancelled:
                    self.send(event="cancelled", id=rid)
                else:
                    self._animate(req)
            finally:
                self.running_id = None
                self.pending.discard(rid)
                self.cancelled.discard(rid)

    def _animate(self, req):
        from .inference import animate_to_file

        rid = req["id"]
        try:
            opts = animate_request(req)
            result = animate_to_file(
                req["mesh"], req["audio"], req["out"], checkpoint=req.get("checkpoint"), fps=opts["fps"],
                device=opts["device"], start=opts["start"], duration=opts["duration"],
                normalize=opts["normalize"], units=opts["units"], dtype=opts["dtype"],
                head_scale=opts["head_scale"], session=self.session,
                progress=lambda stage, frac, msg: self.send(event="progress", id=rid, stage=stage,
                                                            fraction=round(frac, 4), message=msg),
                cancel=lambda: rid in self.cancelled,
            )
            rig = self._rig(req, rid) if req.get("rig") else None
            compact = self._compact(req, rid, opts["device"]) if req.get("compact") is not None else None
            self.send(event="progress", id=rid, stage="write", fraction=1.0, message="done")
            self.send(event="result", id=rid, out=str(result.path), frames=result.frames,
                      vertices=result.vertices, fps=result.fps, device=result.meta["device"],
                      dtype=result.meta["dtype"], timings=result.meta["timings"],
                      warnings=result.meta["warnings"], meta=result.meta,
                      **({"rig": rig} if rig else {}), **({"compact": compact} if compact else {}))
        except Cancelled:
            self.send(event="cancelled", id=rid)
        except ScanTalkError as exc:
            self.send(event="error", id=rid, code=exc.code, message=str(exc))
        except Exception as exc:  # a bug: say so, keep serving
            log.error("animate %s failed:\n%s", rid, traceback.format_exc())
            self.send(event="error", id=rid, code="internal",
                      message=f"internal error ({type(exc).__name__}: {exc}); see the worker log")

    def _compact(self, req, rid, device) -> dict:
        """The Compact basis and weights of the result just written, appended to it
        (docs/protocol.md). Returns its report."""
        from .compact import compact_result_file

        o = compact_options(req["compact"])
        self.send(event="progress", id=rid, stage="compact", fraction=0.97, message="computing the Compact basis")

        last = [-1]

        def progress(frac):
            pct = int(frac * 100)
            if pct != last[0]:  # one event per percent, however many chunks
                last[0] = pct
                self.send(event="progress", id=rid, stage="compact", fraction=round(0.97 + 0.03 * frac, 4),
                          message=f"Compact basis {pct}%")

        return compact_result_file(req["out"], max_error_mm=o["max_error_mm"], k_max=o["k_max"],
                                   strength=o["strength"], smoothing=o["smoothing"],
                                   metres_per_unit_override=o["metres_per_unit"], device=device,
                                   progress=progress, cancel=lambda: rid in self.cancelled)

    def _rig(self, req, rid) -> dict:
        """Solve the rig named by the request's `rig` field for the result just written; the weights
        go into the result file (docs/protocol.md). Returns the fit report."""
        from .rig_solve import solve_result_file

        opts = rig_options(req["rig"])
        self.send(event="progress", id=rid, stage="rig", fraction=0.99, message="solving rig weights")
        fit = solve_result_file(req["out"], opts["keys_path"], smooth=opts["smooth"], scale=opts["scale"],
                                csv_path=opts["csv_path"], json_path=opts["json_path"],
                                min_explained=opts["min_explained"], cancel=lambda: rid in self.cancelled)
        return fit.report

    # ---- main thread --------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Handle one request line; False means shut down."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as exc:
            self.send(event="error", id=None, code="bad_request", message=f"not a JSON request: {exc}")
            return True
        rid, cmd = req.get("id"), req.get("cmd")
        if not isinstance(rid, str) or not rid:
            self.send(event="error", id=rid, code="bad_request", message="every request needs a string 'id'")
            return True
        if cmd == "animate":
            try:  # refuse bad options at once, not after the jobs queued before this one
                animate_request(req)
            except BadRequest as exc:
                self.send(event="error", id=rid, code=exc.code, message=str(exc))
                return True
            self.pending.add(rid)
            self.jobs.put(req)
        elif cmd == "cancel":
            target = req.get("target")
            active = target in self.pending
            if active:
                self.cancelled.add(target)
            self.send(event="result", id=rid, cancelled=bool(active))
        elif cmd == "ping":
            self.send(event="pong", id=rid, version=__version__)
        elif cmd == "doctor":
            from .doctor import report

            self.send(event="result", id=rid, **report(self.cache_dir))
        elif cmd == "shutdown":
            self.send(event="result", id=rid, shutdown=True)
            return False
        else:
            self.send(event="error", id=rid, code="bad_request",
                      message=f"unknown cmd {cmd!r}; expected animate, cancel, ping, doctor or shutdown")
        return True

    def serve(self, inp):
        self.thread.start()
        self.send(event="ready", version=__version__, pid=os.getpid())
        for line in inp:
            if line.strip() and not self.handle(line):
                break
        # shutdown or stdin closed: stop the running job at its next check, then exit
        self.cancelled.update(self.pending)
        self.jobs.put(None)
        self.thread.join(timeout=30)


def serve(cache_dir=None) -> int:
    # Protocol lines own the real stdout; anything else that prints (libraries, C code writing to
    # fd 1) is redirected to stderr so it can never corrupt the protocol.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    Worker(proto, cache_dir).serve(sys.stdin)
    return 0
