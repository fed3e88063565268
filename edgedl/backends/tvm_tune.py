"""TVM tuning: MetaSchedule over a model's kernels, bounded by trials and by minutes, measured on this
host or on the device through TVM's RPC, kept in a database per target that later compiles reuse.

Where it sits: the TVM backend (:mod:`edgedl.backends.tvm`) calls :func:`tune_and_build` for
``edgedl compile --backend tvm --tune``; everything MetaSchedule needs (builder, runner, database,
the clock) is set up here.

The database
------------
A tuning database is a folder: MetaSchedule's ``database_workload.json`` and
``database_tuning_record.json``, edgedl's list of tasks already tuned (``edgedl_tuned_tasks.json``)
and ``edgedl_tuning.json``, which says which target the records were measured for (its name and its
TVM target dictionary) and where they were measured. The default folder is per target, in the user
cache; ``--tuning-db DIR`` names one. The folder can be copied between machines of one target (a
database tuned on one Raspberry Pi 4 serves every other): a compile for another target refuses it by
name instead of using schedules measured elsewhere. Tasks with records are not tuned again.

Tuning on the device
--------------------
``--tune-device tracker://HOST:PORT/KEY`` (or ``HOST:PORT``) measures each candidate on the device
through MetaSchedule's RPC runner; candidates are built here, cross-compiled with the target's
``cross_compiler`` where it has one, uploaded and run there. That needs TVM's own RPC server on the
device, ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``, which loads and runs any
library it is sent: run it on trusted networks only. The ``edgedl serve`` agent does not take its
place, by design: it runs only bundles whose hashes (and, with ``--trust``, signatures) verify.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path

from edgedl.errors import DeviceError, OptionError

log = logging.getLogger(__name__)

IDENTITY = "edgedl_tuning.json"
IDENTITY_SCHEMA = "edgedl.tvm-tuning/1"
LEDGER = "edgedl_tuned_tasks.json"
DEVICE_TIMEOUT_S = 30.0      # reaching the device and getting a session on it, before tuning starts
TRIAL_TIMEOUT_S = 60         # one candidate's build, and one candidate's upload and run on the device
BUILDER_BATCHES = 16         # batches one set of builder processes builds before it is replaced
DEVICE_FORMS = ("HOST:PORT (a TVM RPC server: python -m tvm.exec.rpc_server --host 0.0.0.0 --port PORT) or "
                "tracker://HOST:PORT/KEY (a TVM tracker and the key its RPC servers registered under)")


def default_tuning_dir() -> Path:
    """The folder that holds the default per-target tuning databases (``$EDGEDL_CACHE/tuning``)."""
    base = os.environ.get("EDGEDL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgedl")
    return Path(base) / "tuning"


def target_key(target) -> str:
    """A short hash of the target's TVM target dictionary: what a database's records are valid for.

    Example:
        >>> from edgedl.targets import load_target
        >>> len(target_key(load_target("x86_64")))
        12
    """
    return hashlib.sha256(json.dumps(target.tvm["target"], sort_keys=True).encode()).hexdigest()[:12]


def parse_tune_device(text: str):
    """Parse ``--tune-device``: ``HOST:PORT`` of a TVM RPC server or ``tracker://HOST:PORT/KEY``.

    Returns:
        An :class:`edgedl.bench.options.Device`.

    Raises:
        OptionError: anything else, showing the accepted forms.

    Example:
        >>> str(parse_tune_device("tracker://10.0.0.1:9190/rpi4"))
        'tracker://10.0.0.1:9190/rpi4'
    """
    from edgedl.bench.options import parse_device

    try:
        return parse_device(text)
    except OptionError:
        raise OptionError(f"--tune-device got '{text}'; expected {DEVICE_FORMS}") from None


def check_tune_options(tune: bool, trials: int, minutes: float | None, device: str | None) -> None:
    """Refuse tuning settings no compile can use, by option name.

    Raises:
        OptionError: the option, what it got and what it takes.

    Example:
        >>> check_tune_options(True, 64, 2.5, "tracker://127.0.0.1:9190/rpi4")
    """
    if tune and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise OptionError(f"--trials must be a positive integer, got {trials!r}")
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
                or minutes <= 0:
            raise OptionError(f"--tune-minutes must be a positive number of minutes, got {minutes!r}")
    if device is not None:
        parse_tune_device(device)
    if not tune and (minutes is not None or device is not None):
        given = " and ".join(n for n, v in (("--tune-minutes", minutes), ("--tune-device", device)) if v is not None)
        raise OptionError(f"{given} appl{'y' if ' and ' in given else 'ies'} to tuning: add --tune (and --backend tvm)")


# -- the database -----------------------------------------------------------------------------------


def open_database(target, db_dir=None) -> Path:
    """The tuning database folder for ``target`` (made if new): ``db_dir`` or the per-target default.

    A folder whose ``edgedl_tuning.json`` names another TVM target is refused: its schedules were
    chosen by timings on other hardware.

    Raises:
        OptionError: the folder belongs to another target (both named), or is not a folder.

    Example:
        >>> from edgedl.targets import load_target
        >>> open_database(load_target("x86_64"), "/tmp/x86-db").name
        'x86-db'
    """
    key = target_key(target)
    work = Path(db_dir) if db_dir else default_tuning_dir() / f"{target.name}-{key}"
    if work.exists() and not work.is_dir():
        raise OptionError(f"--tuning-db '{work}' is a file; give a folder (a new one is made)")
    work.mkdir(parents=True, exist_ok=True)
    path = work / IDENTITY
    if path.exists():
        try:
            identity = json.loads(path.read_text())
            theirs = identity["target_key"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OptionError(f"the tuning database '{work}' has an unreadable {IDENTITY}; give another --tuning-db"
                              ) from None
        if theirs != key:
            raise OptionError(
                f"the tuning database '{work}' was tuned for the target '{identity.get('target')}' "
                f"({_describe(identity.get('tvm_target'))}), not '{target.name}' ({_describe(target.tvm['target'])}); "
                f"its schedules were timed on other hardware: give another --tuning-db (or none, for "
                f"'{target.name}''s default)")
    else:
        from edgedl import _io

        _io.write_json(path, _identity(target))
    return work


def _identity(target) -> dict:
    import tvm

    return {"schema": IDENTITY_SCHEMA, "target": target.name, "target_key": target_key(target),
            "tvm_target": json.loads(json.dumps(dict(target.tvm["target"]))), "tvm": tvm.__version__,
            "measured_on": []}


def _describe(tvm_target) -> str:
    if not isinstance(tvm_target, dict):
        return "unknown TVM target"
    words = [str(tvm_target.get("kind", "?"))]
    for name in ("mtriple", "mcpu", "arch"):
        if tvm_target.get(name):
            words.append(f"{name}={tvm_target[name]}")
    return " ".join(words)


def _note_measured_on(work: Path, where: str) -> None:
    from edgedl import _io

    path = work / IDENTITY
    identity = json.loads(path.read_text())
    if where not in identity.setdefault("measured_on", []):
        identity["measured_on"].append(where)
        _io.write_json(path, identity)


# -- the device ---------------------------------------------------------------------------------------


def check_device(device, timeout: float = DEVICE_TIMEOUT_S) -> None:
    """Get one session on the device's TVM RPC server (through the tracker for a key), or say why not.

    Raises:
        DeviceError: the tracker or the server cannot be reached, the tracker has no server under the
            key, no server answered as TVM's RPC server within ``timeout`` seconds (all busy, or an
            ``edgedl serve`` agent, which does not run tuning candidates).

    Example:
        >>> check_device(parse_tune_device("tracker://127.0.0.1:9190/rpi4"), timeout=10)  # doctest: +SKIP
    """
    what = "the TVM tracker" if device.key else "a TVM RPC server"
    try:
        socket.create_connection((device.host, device.port), timeout=min(10.0, timeout)).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        start = (f"start one with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {device.port}" if device.key
                 else f"on the device run: python -m tvm.exec.rpc_server --host 0.0.0.0 --port {device.port}")
        raise DeviceError(f"cannot reach {what} at {device.address} ({why}); {start}") from None
    box: dict = {}

    def session():
        from tvm import rpc

        try:
            if device.key:
                tracker = rpc.connect_tracker(device.host, device.port)
                keys = sorted({s["key"].split(":", 1)[1] for s in tracker.summary().get("server_info", [])
                               if str(s.get("key", "")).startswith("server:")})
                if device.key not in keys:
                    box["error"] = (f"the tracker at {device.address} has no server under the key '{device.key}' "
                                    f"(its keys: {', '.join(keys) or 'none'}); on the device run: python -m "
                                    f"tvm.exec.rpc_server --tracker {device.address} --key {device.key}")
                    return
                sess = tracker.request(device.key, priority=1, session_timeout=int(timeout), max_retry=1)
            else:
                sess = rpc.connect(device.host, device.port, session_timeout=int(timeout))
            sess.get_function("tvm.contrib.random.random_fill_for_measure")
            box["ok"] = True
        except Exception as e:  # noqa: BLE001 - any failure here is the device's answer
            if not device.key and "cannot find server that matches key" in str(e):
                box["error"] = (f"the TVM RPC server at {device.address} is registered with a tracker and takes no "
                                "direct sessions: give tracker://TRACKER_HOST:PORT/KEY")
                return
            box["error"] = f"{what} at {device.address} failed: {' '.join(str(e).split())[:200]}"

    thread = threading.Thread(target=session, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in box:
        return
    if "error" in box:
        raise DeviceError(f"{box['error']}; --tune-device takes {DEVICE_FORMS}")
    raise DeviceError(f"no TVM RPC server at {device} gave a session within {timeout:g} s (all busy, or not a TVM "
                      f"RPC server: an `edgedl serve` agent does not run tuning candidates); on the device run: "
                      f"python -m tvm.exec.rpc_server "
                      + (f"--tracker {device.address} --key {device.key}" if device.key else f"--port {device.port}"))


def _direct_session(rpc_config):
    """MetaSchedule's session maker for a TVM RPC server reached without a tracker."""
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, rpc_config.tracker_port,
                       session_timeout=rpc_config.session_timeout_sec)


def _runner(device):
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.RPCConfig(tracker_host=device.host, tracker_port=device.port,
                                 tracker_key=device.key or "direct", session_timeout_sec=TRIAL_TIMEOUT_S)
    return ms.runner.RPCRunner(config, f_create_session=None if device.key else _direct_session)


def _export_shared(cross, mod) -> str:
    """MetaSchedule's export for a device: a shared library (cross-linked where the target says)."""
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    if cross:
        from tvm.support import cc

        mod.export_library(path, fcompile=cc.cross_compiler(cross))
    else:
        mod.export_library(path)
    return path


def _warm_builder_worker():
    """Import TVM's tensor intrinsics once per builder process.

    Registering them parses ~500 TVMScript functions with ``inspect.stack()`` (14-40 s here); done
    lazily inside the first build, that cost lands in the build's 30 s timeout and every trial fails
    with "LocalBuilder: Timeout". Paid in the worker's initializer, it is not counted.
    """
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _builder(cross=None, device=None):
    """MetaSchedule's local builder with its worker processes kept from one batch to the next.

    ``LocalBuilder`` starts new workers for every batch (against a slow memory leak in long-lived
    ones), and each new worker imports TVM's tensor intrinsics: 15-40 s a batch here, more than
    building the batch, and paid once per task per round. Here the workers live for
    ``BUILDER_BATCHES`` batches, then are replaced.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder, local_builder
    from tvm.s_tir.meta_schedule.utils import cpu_count
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    export = functools.partial(_export_shared, cross) if device is not None else None

    @derived_object
    class KeptBuilder(PyBuilder):
        def __init__(self):
            self.pool, self.batches = None, 0

        def build(self, build_inputs):
            if self.pool is None or self.batches >= BUILDER_BATCHES:
                self.close()
                self.pool = PopenPoolExecutor(max_workers=cpu_count(logical=True), timeout=TRIAL_TIMEOUT_S,
                                              initializer=_warm_builder_worker)
            self.batches += 1
            jobs = [(None, export, b.mod, b.target, local_builder._serialize_params(b.params)) for b in build_inputs]
            results = []
            for out in self.pool.map_with_error_catching(lambda job: local_builder._worker_func(*job), jobs):
                if out.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(out.value, None))
                elif out.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {TRIAL_TIMEOUT_S} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {out.value}"))
            return results

        def close(self):
            if self.pool is not None:
                self.pool.shutdown()
                self.pool, self.batches = None, 0

    return KeptBuilder()


# -- tuning -------------------------------------------------------------------------------------------


def _task_key(task) -> str:
    """A stable key for a tuning task: the structural hash of its workload."""
    import tvm_ffi

    return f"{task.task_name}:{tvm_ffi.structural_hash(task.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}"


def _clock(deadline: float | None):
    """A measure callback that counts trials and their failures, and ends each task once past the deadline."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Clock(PyMeasureCallback):
        def __init__(self):
            self.trials = self.failed = 0
            self.out_of_time = False

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.trials += len(measure_candidates)
            self.failed += sum(1 for b, r in zip(builder_results, runner_results)
                               if b.error_msg is not None or r.error_msg is not None)
            if deadline is not None and time.monotonic() >= deadline:
                self.out_of_time = True
                # This task ends here; each other one ends at its own next call. (Ending tasks that have
                # no batch in flight from here trips MetaSchedule's "!task->is_terminated" check when
                # the clock runs out within the first round.)
                if not task_scheduler.tasks_[task_id].is_terminated:
                    task_scheduler.terminate_task(task_id)

    return Clock()


def _batch(trials: int, minutes: float | None, num_tasks: int) -> int:
    """Candidates measured per task per round: the budget shared so that every task gets a round
    (MetaSchedule tunes the first task alone until a batch is done), at most 64; with a clock, a first
    round that fits the minutes at about a second a candidate, so the clock is checked in time."""
    batch = max(1, min(64, trials // max(1, num_tasks)))
    if minutes is not None:
        batch = max(1, min(batch, int(minutes * 60 / max(1, num_tasks))))
    return batch


def tune_and_build(mod, tvm_target, target, trials: int = 64, minutes: float | None = None, db_dir=None,
                   device: str | None = None):
    """MetaSchedule-tune the module's kernels within ``trials`` and ``minutes``, then build it from the
    database (reused and grown on disk).

    Tasks that already have records in the database are not tuned again. With ``minutes`` the clock
    is checked after each measured batch; once it is up, tasks stop after the batches in flight (in
    the first round, one per task; later, one), so tuning ends within about a batch of the budget,
    or after the first round where that takes longer. With ``device``, candidates are measured
    there through TVM's RPC.

    Args:
        mod: the Relax module (imported, not yet legalized).
        tvm_target: the ``tvm.target.Target``.
        target: the edgedl target (its TVM target dictionary keys the database).
        trials: the most candidates measured in all.
        minutes: the most wall-clock minutes spent tuning (None: trials alone bound it).
        db_dir: the database folder (None: the target's default in the user cache).
        device: ``tracker://HOST:PORT/KEY`` or ``HOST:PORT`` of TVM RPC servers to measure on (None: here).

    Returns:
        (the Relax executable, what the manifest records of the tuning).

    Raises:
        OptionError: bad budgets, a database of another target, a cross-compiled target without a device.
        DeviceError: the device cannot be reached or gives no session.

    Example:
        >>> ex, summary = tune_and_build(mod, tvm_target, load_target("x86_64"), trials=64, minutes=2)  # doctest: +SKIP
    """
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    check_tune_options(True, trials, minutes, device)
    cross = target.tvm.get("cross_compiler")
    where = parse_tune_device(device) if device else None
    if cross and where is None:
        triple = (target.tvm["target"].get("mtriple") or dict(target.tvm.get("host") or {}).get("mtriple")
                  or "another machine")
        raise OptionError(f"--tune for '{target.name}' measures candidates built for {triple}, which do not run on "
                          "this host: add --tune-device tracker://HOST:PORT/KEY (or HOST:PORT) of a TVM RPC server on "
                          "the device")
    work = open_database(target, db_dir)
    with tvm_target:
        mod = relax.get_pipeline("zero")(mod)
    db = ms.database.JSONDatabase(work_dir=str(work))
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    ledger_path = work / LEDGER
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    todo = [t for t in tasks if _task_key(t) not in ledger]
    start = time.perf_counter()
    clock = None
    seeds = {"seeded": 0, "seed_us": {}}
    measured_on = str(where) if where else "this host"
    if todo:
        if where is not None:
            check_device(where)
        deadline = time.monotonic() + minutes * 60 if minutes is not None else None
        clock = _clock(deadline)
        # MetaSchedule's logging config lists the handlers already on its logger by name; one without a
        # name (pytest's capture handler, after an earlier tuning configured that logger) makes it fail
        # with "'NoneType' object has no attribute 'format'". Those are set aside while it tunes.
        ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
        unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
        for handler in unnamed:
            ms_logger.removeHandler(handler)
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, str(work / "logs"))
        builder = _builder(cross, where)
        runner = _runner(where) if where is not None else ms.runner.LocalRunner()
        try:
            if tvm_target.kind.name == "llvm":  # the search starts from edgedl's default schedules, measured as it measures
                from edgedl.backends.tvm_schedule import seed_database

                seeds = seed_database(db, todo, tvm_target, builder, runner)
            try:
                db = ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(work / "logs"),
                                   max_trials_global=trials, num_trials_per_iter=_batch(trials, minutes, len(todo)),
                                   database=db, builder=builder, runner=runner,
                                   measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), clock])
            except Exception as e:  # noqa: BLE001 - see below
                # MetaSchedule's task scheduler can trip its own "!task->is_terminated" check when the
                # clock ends tasks in the first round; every record measured so far is in the database.
                if not (clock.out_of_time and "is_terminated" in str(e)):
                    raise
                log.debug("MetaSchedule stopped by the clock: %s", " ".join(str(e).split())[:200])
            finally:
                for handler in unnamed:
                    ms_logger.addHandler(handler)
        finally:
            builder._inst.close()
        for t in todo:  # a task the clock stopped before it ran keeps no record of its own (only its seed)
            if len(db.get_top_k(db.commit_workload(t.dispatched[0]), 2)) > (t.task_name in seeds["seed_us"]):
                ledger[_task_key(t)] = {"name": t.task_name, "trials_budget": trials, "measured_on": measured_on}
        from edgedl import _io

        _io.write_json(ledger_path, ledger)
        _note_measured_on(work, measured_on)
    spent = time.perf_counter() - start
    kept = None
    if tvm_target.kind.name == "llvm":  # kernels without a record get edgedl's default schedules, not plain loops
        from edgedl.backends.tvm_schedule import build_from_database, schedule, time_executable

        ex = build_from_database(db, mod, tvm_target)
        if where is None and not cross:
            # Each kernel's record was timed alone; the model as a whole can still be slower than with
            # the default schedules (a short search picks candidates that time well in isolation).
            # Both builds are timed here, and the faster is kept.
            default = relax.build(schedule(mod, tvm_target), target=tvm_target)
            tuned_us, default_us = time_executable(ex, mod), time_executable(default, mod)
            kept = {"tuned_build_us": round(tuned_us, 1), "default_build_us": round(default_us, 1),
                    "kept": "tuned" if tuned_us <= default_us else "default schedules"}
            if default_us < tuned_us:
                ex = default
    else:
        ex = ms.relax_integration.compile_relax(db, mod, tvm_target, params=None)
    summary = {"tuned": True, "tuning_db": str(work), "tasks": len(tasks), "tasks_from_db": len(tasks) - len(todo),
               "seeded_with_default_schedules": seeds["seeded"], **({"compared": kept} if kept else {}),
               "trials_run": clock.trials if clock else 0, "trials_failed": clock.failed if clock else 0,
               "trials_budget": trials, "minutes_budget": minutes, "tuning_time_s": round(spent, 1),
               "tuning_minutes": round(spent / 60, 2), "measured_on": measured_on if todo else "the database",
               "stopped_by": ("the database" if not todo else "minutes" if clock.out_of_time else "trials")}
    if clock and clock.trials and clock.failed == clock.trials:
        log.warning("all %d tuning trials failed on %s; the build uses TVM's default schedules", clock.trials,
                    measured_on)
    return ex, summary
