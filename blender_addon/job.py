"""The modal operator's logic as a plain object: send one `animate` request, poll its events
without blocking, turn progress into a fraction and a label, cancel (killing the worker if it does
not answer in time), and end in exactly one final state. No bpy here.
"""
from __future__ import annotations

import time

from .worker_client import WorkerCancelled, WorkerClient, WorkerError, outcome

RUNNING, DONE, ERROR, CANCELLED = "RUNNING", "DONE", "ERROR", "CANCELLED"

STAGE_LABELS = {
    "start": "Starting backend",
    "load_mesh": "Reading mesh",
    "load_audio": "Reading audio",
    "load_model": "Loading model",
    "operators": "Computing mesh operators",
    "audio": "Encoding speech",
    "decode": "Predicting motion",
    "compact": "Fitting the Compact basis",
    "write": "Saving result",
    "result": "Reading the result",
    "keys": "Writing shape keys",
}

# After the backend is done, the add-on's own stages take the last part of the bar.
BACKEND_SHARE = 0.9


def esc_cancels(mouse, panels) -> bool:
    """Esc stops a job only with the mouse over one of our panels: `mouse` is (x, y) in window
    coordinates, `panels` the (x, y, width, height) of the sidebar regions showing the ScanTalk
    tab. Anywhere else Esc belongs to Blender (e.g. to stop playback)."""
    mx, my = mouse
    return any(x <= mx < x + w and y <= my < y + h for x, y, w, h in panels)


class AnimateJob:
    """Lifecycle: start() -> poll() ... -> state in (DONE, ERROR, CANCELLED).

    `client_factory` returns a started WorkerClient (called once, in start()); the job does not own
    the client unless it had to kill it on cancel. `fields` are the `animate` request's fields.
    """

    def __init__(self, client_factory, fields: dict, cancel_grace: float = 5.0, clock=time.monotonic):
        self._factory = client_factory
        self.fields = dict(fields)
        self.cancel_grace = cancel_grace
        self.clock = clock
        self.client: WorkerClient | None = None
        self.request = None
        self.state = RUNNING
        self.stage = "start"
        self.fraction = 0.0
        self.message = ""
        self.result: dict | None = None
        self.error: WorkerError | None = None
        self.killed_worker = False
        self._cancel_at: float | None = None

    # -- driving -----------------------------------------------------------------------------------
    def start(self) -> "AnimateJob":
        try:
            self.client = self._factory()
            self.request = self.client.request("animate", **self.fields)
        except WorkerError as exc:
            self._fail(exc)
        except Exception as exc:  # e.g. no backend found: its message says what to do
            self._fail(WorkerError(str(exc), code="not_started"))
        return self

    def poll(self) -> str:
        """Consume the events that arrived; return the state. Never blocks."""
        if self.state != RUNNING or self.request is None:
            return self.state
        for ev in self.request.poll():
            kind = ev.get("event")
            if kind == "progress":
                self._progress(ev)
            elif kind in ("result", "error", "cancelled", "exit"):
                self._finish(ev)
                break
        if self.state == RUNNING and self._cancel_at is not None:
            if self.clock() - self._cancel_at > self.cancel_grace:
                # The worker did not stop at a check point in time: stop the process itself.
                self.killed_worker = True
                self.client.kill()
                self.state = CANCELLED
                self.message = "Cancelled (backend stopped)"
        return self.state

    def wait(self, timeout: float | None = None, tick: float = 0.1) -> str:
        """Blocking loop over poll() (for scripts and background mode)."""
        deadline = None if timeout is None else self.clock() + timeout
        while self.poll() == RUNNING:
            if deadline is not None and self.clock() > deadline:
                self.cancel()
                deadline = None
            if self.request is not None:
                self.request.wait_for_event(timeout=tick)
            else:
                break
        return self.state

    def cancel(self) -> None:
        if self.state != RUNNING or self._cancel_at is not None:
            return
        self._cancel_at = self.clock()
        self.message = "Cancelling..."
        if self.request is None or self.client is None:
            self.state = CANCELLED
            return
        try:
            self.client.cancel(self.request.id)
        except WorkerError:
            self.killed_worker = True
            self.client.kill()
            self.state = CANCELLED

    # -- state -------------------------------------------------------------------------------------
    @property
    def cancelling(self) -> bool:
        return self._cancel_at is not None and self.state == RUNNING

    @property
    def label(self) -> str:
        if self.cancelling:
            return "Cancelling..."
        return STAGE_LABELS.get(self.stage, self.stage.replace("_", " ").capitalize())

    @property
    def progress_text(self) -> str:
        return f"{self.label} {int(round(self.fraction * 100))}%"

    def _progress(self, ev: dict) -> None:
        self.stage = str(ev.get("stage") or self.stage)
        try:
            f = float(ev.get("fraction", self.fraction))
        except (TypeError, ValueError):
            f = self.fraction
        if f == f:  # not NaN
            self.fraction = min(1.0, max(self.fraction, f))  # never goes backwards
        self.message = str(ev.get("message") or "")

    def _finish(self, ev: dict) -> None:
        try:
            self.result = outcome(ev, self.client.stderr_tail() if self.client else "")
            self.state = DONE
            self.fraction = 1.0
        except WorkerCancelled:
            self.state = CANCELLED
            self.message = "Cancelled"
        except WorkerError as exc:
            if self._cancel_at is not None and ev.get("event") == "exit":
                self.state = CANCELLED
                self.message = "Cancelled"
            else:
                self._fail(exc)

    def _fail(self, exc: WorkerError) -> None:
        self.error = exc
        self.state = ERROR
        self.message = exc.user_message()
