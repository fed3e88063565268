"""Crash isolation: one step on an untrusted file, run in a child process with a timeout.

LiteRT, TFLite Micro and Vela are native code, and a malformed model file can make them die with
SIGSEGV, SIGABRT (``malloc(): invalid size``) or SIGFPE instead of raising. The first time edgedl
parses, allocates or runs such a file (``inspect``, the reference and fidelity check of ``compile``,
TFLite Micro's arena search) it does so through :func:`run`: the step runs in a forked child, and
the parent gets its result, its :class:`~edgedl.errors.EdgeDLError`, or one line saying which tool
died on which file. The parent owns every temporary folder, so they are removed whatever happens to
the child.

A fork costs a few milliseconds even with TensorFlow loaded (a fresh interpreter would pay for its
imports again, about a second), and the child starts with the parent's modules already imported.
What runs in the child must not start threads the parent relies on or create temporary folders:
it computes and returns.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from edgedl.errors import EdgeDLError, InputFileError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0

_SIGNALS = {
    signal.SIGSEGV: "SIGSEGV (a segmentation fault)",
    signal.SIGABRT: "SIGABRT (it aborted)",
    signal.SIGFPE: "SIGFPE (an arithmetic fault such as a division by zero)",
    signal.SIGBUS: "SIGBUS (a bus error)",
    signal.SIGILL: "SIGILL (an illegal instruction)",
    signal.SIGKILL: "SIGKILL (killed, perhaps for running out of memory)",
}


def signal_name(number: int) -> str:
    """``SIGSEGV (a segmentation fault)`` for 11; ``signal 42`` for a number without a name."""
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    return _SIGNALS.get(sig, sig.name)


def run(fn, *args, file: str | os.PathLike, tool: str, action: str, timeout: float | None = DEFAULT_TIMEOUT_S,
        error: type[EdgeDLError] = InputFileError, fresh: bool | None = None, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child; its (picklable) result, or its error, here.

    Args:
        fn: any callable (the child is a fork: nothing is pickled on the way in); its result is
            pickled back.
        file: the untrusted file the step reads, named in the error.
        tool: what does the native work, for the message ("LiteRT", "TFLite Micro").
        action: what the step does, in words that read after "while" ("loading it").
        timeout: seconds before the child is killed and the step fails (None: no limit).
        error: the EdgeDLError subclass raised when the child dies: InputFileError (the file is at
            fault, the default) or BackendError (a compiled artifact).
        fresh: run in a new interpreter instead of a fork (``fn`` and its arguments are pickled, so
            ``fn`` must be a module-level function). None (the default): fresh where a fork is not
            safe for ``tool`` (:func:`fork_is_safe`).

    Returns:
        What ``fn`` returned.

    Raises:
        EdgeDLError: the one ``fn`` raised in the child, as it was.
        InputFileError (or ``error``): the child died of a signal or ran past ``timeout``; the
            message names ``file``, ``tool``, the signal and what the child was doing.
        Exception: any other exception of ``fn``, with the child's traceback as a note (a bug).

    Example:
        >>> run(len, "abc", file="x.tflite", tool="Python", action="counting it")
        3
    """
    if fresh is None:
        fresh = not fork_is_safe(tool)
    outcome, native = (_spawn if fresh else _fork)(fn, args, kwargs, timeout)
    kind = outcome[0]
    if kind == "ok":
        return outcome[1]
    _raise_from_child(outcome, f"{tool} failed while {action} in a child process")
    name = Path(file).name
    if kind == "signal":
        detail = _native_detail(native)
        message = (f"{tool} crashed with {signal_name(outcome[1])} while {action}; the file is malformed or "
                   f"not one {tool} can read{f' ({detail})' if detail else ''}")
    elif kind == "timeout":
        message = (f"{tool} did not finish {action} within {timeout:g} s and was stopped; the file is malformed "
                   "or too large for this step")
    else:  # "lost": the child exited without a result (it called exit itself)
        message = f"{tool} exited with status {outcome[1]} without an answer while {action}"
    log.debug("child for %s (%s, %s): %s; its output: %s", name, tool, action, kind, native[-2000:])
    if error is InputFileError:
        raise InputFileError(file, message)
    raise error(f"{file}: {message}")


def died(fn, *args, timeout: float | None = DEFAULT_TIMEOUT_S, fresh: bool = False, **kwargs):
    """``(result, None)`` from ``fn`` in a child, or ``(None, what)`` when it died or timed out, where
    ``what`` names the signal ("SIGSEGV (a segmentation fault)") or says "timed out".

    For steps where a crash is an answer rather than an error (one probe of a search). Errors that
    ``fn`` raises are raised here as with :func:`run`.
    """
    outcome, native = (_spawn if fresh else _fork)(fn, args, kwargs, timeout)
    kind = outcome[0]
    if kind == "ok":
        return outcome[1], None
    _raise_from_child(outcome, "failed in a child process")
    log.debug("child for %s: %s; its output: %s", getattr(fn, "__name__", fn), outcome, native[-2000:])
    if kind == "signal":
        return None, signal_name(outcome[1])
    return None, ("timed out" if kind == "timeout" else f"exited with status {outcome[1]} without an answer")


def _raise_from_child(outcome, context: str) -> None:
    """Raise what the child raised (nothing when it died instead)."""
    if outcome[0] == "edgedl":
        raise _rebuild(*outcome[1:]) from None
    if outcome[0] == "exception":
        exc, text = outcome[1], outcome[2]
        if exc is None:
            raise RuntimeError(f"{context}:\n{text}")
        exc.add_note(f"in the child process:\n{text}")
        raise exc


def _fork(fn, args, kwargs, timeout):
    """Run in a child: (("ok", result) | ("edgedl", cls, message, attrs) | ("exception", exc, tb)
    | ("signal", n) | ("timeout",) | ("lost", status), the child's native output)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    native = tempfile.TemporaryFile()  # unlinked already: nothing is left behind whatever happens
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            os.dup2(native.fileno(), 1)
            os.dup2(native.fileno(), 2)
            _child(fn, args, kwargs, write_end)
        finally:
            os._exit(70)
    os.close(write_end)
    return _collect(read_end, native, timeout, lambda: os.waitpid(pid, 0)[1], lambda: _kill(pid))


FORK_UNSAFE_AFTER_TENSORFLOW = ("LiteRT", "TFLite Micro")


def fork_is_safe(tool: str) -> bool:
    """Whether ``tool`` may run in a fork of this process. LiteRT and TFLite Micro (TFLite kernels, like
    the ones TensorFlow's converter loads) have died with SIGSEGV on valid models in children forked
    after an int8 conversion here; once TensorFlow is imported, they get a fresh interpreter."""
    return tool not in FORK_UNSAFE_AFTER_TENSORFLOW or "tensorflow" not in sys.modules


def _spawn(fn, args, kwargs, timeout):
    """As :func:`_fork`, in a new interpreter: ``fn`` (module-level) and its arguments are pickled to it."""
    import subprocess

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    payload = pickle.dumps((fn, args, kwargs))
    native = tempfile.TemporaryFile()
    read_end, write_end = os.pipe()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the edgedl this process runs, whatever sys.path says
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryFile() as stdin:
        stdin.write(payload)
        stdin.seek(0)
        proc = subprocess.Popen([sys.executable, "-c", f"from edgedl._isolate import _fresh_main; _fresh_main({write_end})"],
                                stdin=stdin, stdout=native, stderr=native, pass_fds=(write_end,), env=env)
    os.close(write_end)

    def wait():
        proc.wait()
        return proc.returncode if proc.returncode >= 0 else -proc.returncode  # as a wait status: signal number

    def kill():
        proc.kill()
        proc.wait()

    outcome, text = _collect(read_end, native, timeout, wait, kill, spawned=proc)
    return outcome, text


def _fresh_main(write_end: int) -> None:
    """The body of a fresh interpreter started by :func:`_spawn`."""
    fn, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    _child(fn, args, kwargs, write_end)


def _collect(read_end, native, timeout, reap, kill, spawned=None):
    """Read a child's pickled answer until it closes the pipe; its outcome and native output."""
    chunks, status, deadline = [], None, None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([read_end], [], [], wait)
            if not ready:  # the deadline passed with the child still running
                kill()
                status = "timeout"
                break
            chunk = os.read(read_end, 1 << 20)
            if not chunk:  # the child closed its end: it finished or died
                status = reap()
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if status is None:  # interrupted (Ctrl-C) or failed here: the child must not outlive this call
            kill()
    native.seek(0)
    text = native.read().decode("utf-8", "replace")
    native.close()
    if status == "timeout":
        return ("timeout",), text
    if spawned is not None:
        if spawned.returncode < 0:
            return ("signal", -spawned.returncode), text
        status = (spawned.returncode & 0xFF) << 8  # an exit status in os.wait's encoding
    if os.WIFSIGNALED(status):
        return ("signal", os.WTERMSIG(status)), text
    data = b"".join(chunks)
    if data:
        try:
            return pickle.loads(data), text
        except Exception as e:
            return ("exception", None, f"its answer could not be read back: {e}"), text
    return ("lost", os.waitstatus_to_exitcode(status)), text


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _child(fn, args, kwargs, write_end: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C in the terminal ends the child as well
    _die_with_parent()
    import faulthandler

    faulthandler.disable()  # its dump would go to the terminal (pytest's copy of stderr): the crash is the answer
    try:
        result = ("ok", fn(*args, **kwargs))
    except EdgeDLError as e:
        result = ("edgedl", type(e), Exception.__str__(e), dict(vars(e)))
    except BaseException as e:  # a bug: carried back with its traceback
        result = ("exception", e, traceback.format_exc())
    try:
        data = pickle.dumps(result)
    except Exception as e:
        data = pickle.dumps(("exception", None, f"{traceback.format_exc()}\nits answer cannot be pickled: {e}"))
    view = memoryview(data)
    while view:
        view = view[os.write(write_end, view):]
    os.close(write_end)
    os._exit(0)


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (a child killed at its timeout takes
    the children it forked in turn along with it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _rebuild(cls, message: str, attrs: dict) -> EdgeDLError:
    """The child's EdgeDLError, rebuilt without calling its ``__init__`` (whose arguments differ)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


def _native_detail(text: str) -> str:
    """The last line a native library printed before dying, when it says something (``malloc(): ...``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    if last.startswith(("Fatal Python error", "Traceback", "File ")) or len(last) > 160:
        return ""
    return last
