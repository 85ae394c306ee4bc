"""Client for the backend worker (`python -m backend serve`, see docs/protocol.md).

Plain Python, no bpy: it starts the worker as a subprocess (argument list, never a shell string),
writes JSON-line requests to its stdin and reads events from its stdout on a background thread,
so the caller (Blender's UI thread) never blocks unless it asks to wait.

    client = backend_env.resolve(...).start_worker()   # isolated (-I), private cwd: see backend_env
    # (WorkerClient(argv, env, cwd).start() for any other argv list)
    req = client.request("animate", mesh=..., audio=..., out=...)
    for ev in req.poll(): ...           # non-blocking
    result = req.wait(timeout=600)      # blocking; raises WorkerError / WorkerCancelled
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time

TERMINAL_EVENTS = ("result", "pong", "error", "cancelled", "exit")

# What the protocol's error codes mean for a user, added after the worker's own message.
_CODE_HINTS = {
    "bad_checkpoint": "Check the checkpoint file in the ScanTalk panel (leave it empty for the bundled model).",
    "no_checkpoint": "No model is available: set a checkpoint file in the ScanTalk panel.",
    "out_of_memory": "The backend ran out of memory: try a shorter clip, a smaller mesh or the CPU device.",
    "device": "The compute device failed: try Device = CPU in the add-on preferences.",
}


class WorkerError(Exception):
    """A failure a user can read: `str(err)` is the message, `code` the protocol's error code
    (or `crashed`, `not_started`, `timeout`), `stderr_tail` the worker's last stderr lines."""

    def __init__(self, message: str, code: str = "internal", stderr_tail: str = ""):
        super().__init__(message)
        self.code = code
        self.stderr_tail = stderr_tail

    def user_message(self, with_stderr: bool = True, max_lines: int = 8) -> str:
        msg = str(self)
        hint = _CODE_HINTS.get(self.code)
        if hint and hint not in msg:
            msg = f"{msg.rstrip()}{'' if msg.rstrip().endswith(('.', '!', '?')) else '.'} {hint}"
        if with_stderr and self.stderr_tail and self.code in ("crashed", "internal", "not_started"):
            lines = [ln for ln in self.stderr_tail.splitlines() if ln.strip()][-max_lines:]
            if lines:
                msg += "\nLast backend output:\n" + "\n".join(lines)
        return msg


class WorkerCancelled(WorkerError):
    def __init__(self, message: str = "cancelled"):
        super().__init__(message, code="cancelled")


def _exit_message(returncode, tail: str) -> str:
    if returncode is None:
        why = "stopped"
    elif returncode < 0:
        sig = -returncode
        why = f"was killed by signal {sig}"
        if sig == 9:
            why += " (the system may have run out of memory)"
    else:
        why = f"exited with code {returncode}"
    msg = f"The ScanTalk backend process {why}."
    if "No module named" in tail:
        msg += " Its Python lacks a package: press 'Set up backend' in the add-on preferences."
    return msg


class Request:
    """One request's events, in order. Created by WorkerClient.request()."""

    def __init__(self, client: "WorkerClient", rid: str, cmd: str):
        self.client = client
        self.id = rid
        self.cmd = cmd
        self._events: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.final: dict | None = None  # the terminal event, once consumed

    def _put(self, event: dict) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self.final is not None

    def poll(self) -> list[dict]:
        """Events received since the last call, without blocking."""
        with self._cond:
            out = list(self._events)
            self._events.clear()
        for ev in out:
            self._see(ev)
        return out

    def wait_for_event(self, timeout: float | None = None) -> bool:
        """Block until at least one event is waiting (without consuming it)."""
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)
            return bool(self._events)

    def next_event(self, timeout: float | None = None) -> dict | None:
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)
            if not self._events:
                return None
            ev = self._events.popleft()
        self._see(ev)
        return ev

    def _see(self, ev: dict) -> None:
        if ev.get("event") in TERMINAL_EVENTS and self.final is None:
            self.final = ev
            self.client._forget(self.id)

    def wait(self, timeout: float | None = None, on_event=None) -> dict:
        """Block until the request ends; return its `result` event or raise WorkerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.final is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WorkerError(f"the backend did not answer '{self.cmd}' within {timeout:.0f} s",
                                  code="timeout", stderr_tail=self.client.stderr_tail())
            ev = self.next_event(timeout=0.5 if left is None else min(left, 0.5))
            if ev is not None and on_event is not None:
                on_event(ev)
        return outcome(self.final, self.client.stderr_tail())


def outcome(ev: dict, stderr_tail: str = "") -> dict:
    """Turn a terminal event into a result dict or the matching exception."""
    kind = ev.get("event")
    if kind in ("result", "pong"):
        return ev
    if kind == "cancelled":
        raise WorkerCancelled()
    if kind == "error":
        raise WorkerError(ev.get("message") or "the backend reported an error",
                          code=ev.get("code", "internal"), stderr_tail=stderr_tail)
    if kind == "exit":
        tail = ev.get("stderr", stderr_tail)
        raise WorkerError(_exit_message(ev.get("returncode"), tail), code="crashed", stderr_tail=tail)
    raise WorkerError(f"unexpected event from the backend: {ev}")


class WorkerClient:
    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None,
                 stderr_lines: int = 200):
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, not a shell string")
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.ready_event: dict | None = None
        self._ready = threading.Event()
        self._stderr = collections.deque(maxlen=stderr_lines)
        self._pending: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = f"c{os.getpid()}_{id(self) & 0xFFFF:x}_"
        self._stdout_done = threading.Event()
        self._exit_event: dict | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "WorkerClient":
        if self.proc is not None:
            return self
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.cwd, env=self.env, bufsize=0, **kwargs)
        except OSError as exc:
            raise WorkerError(f"could not start the ScanTalk backend ({self.argv[0]}): {exc}",
                              code="not_started") from exc
        threading.Thread(target=self._read_stdout, name="scantalk-worker-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="scantalk-worker-stderr", daemon=True).start()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._stdout_done.is_set()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Block until the worker's `ready` event (or raise if it exits first)."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._stdout_done.is_set():
                ev = self._exit_event or {"event": "exit", "returncode": self.proc.poll() if self.proc else None}
                outcome(ev, self.stderr_tail())
            if time.monotonic() > deadline:
                raise WorkerError(f"the backend did not start within {timeout:.0f} s",
                                  code="timeout", stderr_tail=self.stderr_tail())
            self._ready.wait(0.1)
        return self.ready_event or {}

    def kill(self) -> None:
        """Stop the process now (used for cancel when the worker does not answer, and at exit)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._stdout_done.wait(timeout=5)

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to shut down; kill it if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.send({"id": self._new_id(), "cmd": "shutdown"})
                self.proc.stdin.close()
            except (WorkerError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            try:
                stream.close()
            except Exception:
                pass

    # -- requests ----------------------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def send(self, obj: dict) -> None:
        if self.proc is None:
            raise WorkerError("the backend is not running", code="not_started")
        data = (json.dumps(obj) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                self._stdout_done.wait(timeout=2)
                raise WorkerError(_exit_message(self.proc.poll(), self.stderr_tail()), code="crashed",
                                  stderr_tail=self.stderr_tail()) from exc

    def request(self, cmd: str, **fields) -> Request:
        rid = self._new_id()
        req = Request(self, rid, cmd)
        with self._lock:
            if self._exit_event is not None:
                req._put(dict(self._exit_event))
                return req
            self._pending[rid] = req
        try:
            self.send({"id": rid, "cmd": cmd, **fields})
        except WorkerError:
            with self._lock:
                self._pending.pop(rid, None)
            raise
        return req

    def call(self, cmd: str, timeout: float | None = None, **fields) -> dict:
        return self.request(cmd, **fields).wait(timeout=timeout)

    def cancel(self, target: str) -> None:
        """Ask the worker to stop request `target` (its own events say when it has). Nothing waits
        for the acknowledgement, so it is not kept as a pending request."""
        self.send({"id": self._new_id(), "cmd": "cancel", "target": target})

    def _forget(self, rid: str) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def stderr_tail(self, n: int = 40) -> str:
        lines = list(self._stderr)[-n:]
        return "\n".join(lines)

    # -- reader threads ----------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        proc = self.proc
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                    if not isinstance(ev, dict):
                        raise ValueError("not an object")
                except ValueError:
                    # The protocol allows nothing but events on stdout; keep it for diagnosis.
                    self._stderr.append(f"[stdout] {line}")
                    continue
                self._dispatch(ev)
        except (OSError, ValueError):
            pass
        finally:
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = None
            # let the stderr reader catch up so the tail holds the traceback
            time.sleep(0.05)
            ev = {"event": "exit", "returncode": rc, "stderr": self.stderr_tail()}
            with self._lock:
                self._exit_event = ev
                pending = list(self._pending.values())
                self._pending.clear()
            for req in pending:
                req._put(dict(ev))
            self._stdout_done.set()

    def _read_stderr(self) -> None:
        try:
            for raw in iter(self.proc.stderr.readline, b""):
                self._stderr.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
        except (OSError, ValueError):
            pass

    def _dispatch(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "ready":
            self.ready_event = ev
            self._ready.set()
            return
        rid = ev.get("id")
        with self._lock:
            req = self._pending.get(rid)
        if req is not None:
            req._put(ev)
