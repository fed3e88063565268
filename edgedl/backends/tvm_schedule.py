"""Default CPU schedules for TVM: what an untuned TVM build runs on x86 and Arm CPUs.

TVM 0.27's CPU pipeline legalizes every operator into plain loop nests and schedules none of them
(its ``dlight`` rules cover GPUs, and on CPUs only GEMV and reductions), so an untuned build runs
scalar loops, 11-80x slower than LiteRT. These rules, in the spirit of ``dlight``, give each fused
kernel the schedule a hand-written direct kernel would have:

- **reduction kernels** (NHWC convolution, depthwise convolution, dense/matmul, pooling): the output
  channels (the innermost, contiguous axis of output and weights) are split into vector registers,
  the output width into a register tile; the reduction loops run inside that tile, so each
  accumulator stays in a register for the whole reduction; the fused epilogue (bias, activation, the
  exact int8 requantization) is computed on the tile as it leaves the registers, vectorised; the
  padding producer is vectorised on its own;
- **elementwise kernels** (casts, additions, layout copies): the chain is inlined into one loop nest,
  flattened and vectorised;
- everything else (softmax, means, arg-max) keeps TVM's own CPU rules (``dlight.cpu``).

Vector width comes from the target: 512 bits where the target names AVX-512 (``mcpu`` such as
``znver4``, ``x86-64-v4``, ``sapphirerapids``, or ``+avx512f``), 256 for other x86-64 (AVX2), 128 for
Arm NEON. With ``num-cores`` above 1 the outermost spatial loop is parallel.

:func:`schedule` is what the TVM backend applies before ``relax.build``; :func:`apply_rules` is the
same for one PrimFunc (the benchmarks and tests use it).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: mcpu names (prefixes) of x86 CPUs with AVX-512
AVX512_CPUS = ("x86-64-v4", "skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "rocketlake",
               "sapphirerapids", "emeraldrapids", "graniterapids", "diamondrapids", "znver4", "znver5", "knl", "knm")


def vector_bits(target) -> int:
    """The SIMD register width the schedules vectorise for (bits)."""
    mtriple = str(target.attrs.get("mtriple", "") or "")
    mcpu = str(target.attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (target.attrs.get("mattr") or [])]
    if mtriple.startswith(("aarch64", "arm")) or mcpu.startswith("cortex"):
        return 128
    if any(a.startswith("+avx512f") for a in mattr) or mcpu.startswith(AVX512_CPUS):
        return 512
    if mcpu in ("", "generic", "x86-64", "x86-64-v2") and not any("avx" in a for a in mattr):
        return 128
    return 256


def vector_registers(target) -> int:
    """How many SIMD registers the target has (32 on AVX-512 and AArch64, 16 on AVX2 and ARMv7)."""
    mtriple = str(target.attrs.get("mtriple", "") or "")
    if mtriple.startswith("aarch64"):
        return 32
    return 32 if vector_bits(target) == 512 else 16


def _cores(target) -> int:
    try:
        return int(target.attrs.get("num-cores", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, max(limit, 1)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if hasattr(ext, "value") else None


def _bits(dtype: str) -> int:
    digits = "".join(ch for ch in dtype if ch.isdigit())
    return int(digits) if digits else 32


def _iter_kinds(sch, block) -> list[str]:
    from tvm import tirx

    return ["R" if iv.iter_type == tirx.IterVar.CommReduce else "S" if iv.iter_type == tirx.IterVar.DataPar else "O"
            for iv in sch.get(block).iter_vars]


#: the most expression text (characters) one inlining may copy into its consumers: a block read
#: several times by the next (the int8 requantization reads its products twice) doubles with each
#: inlining, and a long chain of those grows beyond what TVM's simplifier can walk in minutes
INLINE_LIMIT = 3000


def _inline_chain(sch, blocks) -> None:
    """Inline each of ``blocks`` into its consumers, where that copies no more than
    :data:`INLINE_LIMIT` characters of expression; the others keep their own loops."""
    for block in blocks:
        try:
            stmt = sch.get(block)
            name = stmt.writes[0].source.name
            size = len(str(stmt.body))
            uses = sum(str(sch.get(c).body).count(f"{name}[") for c in sch.get_consumers(block))
            if uses > 1 and size * uses > INLINE_LIMIT and not _is_bool(stmt.writes[0]):
                continue
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined keeps its own loops
            continue


def _is_bool(region) -> bool:
    return str(region.source.dtype) == "bool"


def _vectorize_flat(sch, block, lanes: int) -> None:
    """Fuse a spatial block's loops and vectorise the innermost ``lanes`` (a divisor of the extent).

    A block that writes or reads a bool buffer keeps scalar loops: TVM stores bools as bytes and its
    vectorised code then mixes byte and bit vectors (``or <16 x i8>, <16 x i1>``), which LLVM rejects.
    """
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or any(_is_bool(r) for r in (*stmt.writes, *stmt.reads)):
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _extent(sch, fused)
    if extent is None:
        return
    inner = _largest_divisor(extent, lanes)
    if inner > 1:
        _, vec = sch.split(fused, [None, inner])
        sch.vectorize(vec)


def _pair_lanes(sch, main, target, kinds, extents) -> int:
    """The lanes of the pmaddwd pair dot product for ``main``, or 0 where it does not apply: an x86
    target, int16 operands into an int32 accumulator, and an even innermost reduction extent."""
    mtriple = str(target.attrs.get("mtriple", "") or "")
    if not mtriple.startswith(("x86_64", "i686", "i386")) or vector_bits(target) < 256:
        return 0
    block = sch.get(main)
    if str(block.writes[0].source.dtype) != "int32" or kinds[-1] != "R" or extents[-1] % 2:
        return 0
    if sorted(str(r.source.dtype) for r in block.reads if r.source.dtype != "int32")[:2] != ["int16", "int16"]:
        return 0
    return 16 if vector_bits(target) == 512 else 8


def _schedule_reduction(sch, root, main, target, pairs: bool = True) -> bool:
    """The direct-kernel schedule for a function whose one reduction block is ``main``."""
    blocks = sch.get_child_blocks(root)
    names = [sch.get(b).name_hint for b in blocks]
    main_name = sch.get(main).name_hint
    at = names.index(main_name)
    kinds = _iter_kinds(sch, main)
    loops = sch.get_loops(main)
    if len(loops) != len(kinds) or "O" in kinds:
        return False
    extents = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents):
        return False
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    reduce_ = [i for i, k in enumerate(kinds) if k == "R"]
    if not spatial or not reduce_ or spatial[-1] > reduce_[0]:
        return False  # not the S...S R...R nest of a legalized operator
    out_dtype = str(sch.get(main).writes[0].source.dtype)
    lanes = max(1, vector_bits(target) // _bits(out_dtype))
    regs = vector_registers(target) - 4
    pair = _pair_lanes(sch, main, target, kinds, extents) if pairs else 0
    if pair and extents[spatial[-1]] % pair:
        pair = 0

    # blocks before the kernel that it does not read feed only the epilogue (an LSTM step's input share,
    # squeezed, added to its recurrent matmul): inlined into it, they are computed at the tile too
    # (only blocks that do not feed the reduction, however indirectly, and within the inlining bound)
    feeding, frontier = set(), [main]
    while frontier:
        for producer in sch.get_producers(frontier.pop()):
            name = sch.get(producer).name_hint
            if name not in feeding:
                feeding.add(name)
                frontier.append(producer)
    _inline_chain(sch, [sch.get_sblock(n) for n in names[:at] if n not in feeding])
    blocks = sch.get_child_blocks(root)
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index(main_name)

    # the epilogue: inline the chain into its last block, which then reads the accumulator
    consumers = [sch.get_sblock(n) for n in names[at + 1:]]
    _inline_chain(sch, consumers[:-1])
    tail = sch.get_child_blocks(root)
    tail_names = [sch.get(b).name_hint for b in tail]
    epilogue = [sch.get_sblock(n) for n in tail_names[tail_names.index(main_name) + 1:]]
    if not epilogue:
        # the accumulator is the function's output: accumulate in a tile and copy it out
        epilogue = [sch.cache_write(main, 0, "global")]
        loops = sch.get_loops(main)

    c_loop = loops[spatial[-1]]
    c_ext = extents[spatial[-1]]
    rows = [i for i in spatial[:-1] if extents[i] > 1]
    gemv = not rows
    c_in = _largest_divisor(c_ext, lanes * (8 if gemv else 1))
    if pair:
        c_in = pair * _largest_divisor(c_ext // pair, 8 if gemv else 1)
    vectors = -(-c_in // lanes)
    c_o, c_i = sch.split(c_loop, [None, c_in])
    tile_loops = []
    if rows:
        w_loop = loops[rows[-1]]
        w_in = _largest_divisor(extents[rows[-1]], max(1, min(8, regs // max(vectors, 1))))
        w_o, w_i = sch.split(w_loop, [None, w_in])
        tile_loops = [w_i]
        outer = [loops[i] for i in spatial[:-1] if i != rows[-1]] + [w_o]
    else:
        outer = [loops[i] for i in spatial[:-1]]
    red = [loops[i] for i in reduce_]
    if pair:
        k_o, k_i = sch.split(red[-1], [None, 2])
        red = red[:-1] + [k_o]
        c_m, c_i = sch.split(c_i, [None, pair])
        sch.reorder(*outer, c_o, *red, *tile_loops, c_m, c_i, k_i)
    else:
        sch.reorder(*outer, c_o, *red, *tile_loops, c_i)
    if _cores(target) > 1 and outer:
        sch.parallel(outer[0])
    if not pair:
        sch.vectorize(c_i)
    for t in tile_loops:
        sch.unroll(t)
    for block in epilogue:  # in order: each one's producers are already computed at the tile
        sch.reverse_compute_at(block, c_o, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, red[0])
    if pair:
        sch.tensorize(c_i, _pair_dot_intrin(pair))
        sch.unroll(c_m)
    for block in (init, *epilogue):
        inner = sch.get_loops(block)[-1]
        if _extent(sch, inner) and _extent(sch, inner) > 1:
            sch.vectorize(inner)
    # producers (padding, casts) before the kernel: vectorised loops of their own
    for name in names[:at]:
        block = sch.get_sblock(name)
        if all(k == "S" for k in _iter_kinds(sch, block)):
            _vectorize_flat(sch, block, lanes)
    return True


def apply_rules(func, target):
    """The scheduled ``tvm.s_tir.Schedule`` for one PrimFunc, or None where no rule applies."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001
        return None
    blocks = sch.get_child_blocks(root)
    if not blocks:
        return None
    kinds = [_iter_kinds(sch, b) for b in blocks]
    reductions = [b for b, k in zip(blocks, kinds) if "R" in k]
    if len(reductions) == 1:
        for pairs in (True, False):
            attempt = sch.copy()
            try:
                if _schedule_reduction(attempt, attempt.get_sblock("root"), attempt.get_sblock(
                        sch.get(reductions[0]).name_hint), target, pairs=pairs):
                    return attempt
            except Exception as e:  # noqa: BLE001 - fall back to the next variant, then TVM's rules
                log.debug("edgedl CPU schedule: reduction rule (pairs=%s) failed: %s", pairs, e)
        return None
    if reductions:
        return None
    # elementwise: inline the chain into its last block, then flatten and vectorise
    _inline_chain(sch, blocks[:-1])
    out = sch.get_child_blocks(root)
    dtype = str(sch.get(out[-1]).writes[0].source.dtype) if sch.get(out[-1]).writes else "float32"
    lanes = max(1, vector_bits(target) // _bits(dtype))
    for block in out:
        _vectorize_flat(sch, block, lanes)
    return sch


def schedule_rules():
    """The rules in the order they are tried: edgedl's, then TVM's own CPU rules."""
    from tvm.s_tir import dlight as dl

    class EdgeDLCPU(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            if "llvm" not in str(target.kind.name):
                return None
            return apply_rules(func, target)

    return [EdgeDLCPU(), dl.cpu.GEMV(), dl.cpu.Reduction()]


def schedule(mod, target):
    """Legalize and fuse ``mod`` as TVM's CPU pipeline does, then schedule every kernel (see above)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)
        mod = dl.ApplyDefaultSchedule(*schedule_rules())(mod)
    return mod


# ---------------------------------------------------------------------------------------------------
# int16 x int16 -> int32 pair dot products (pmaddwd) for the exact int8 lowering on x86
#
# The exact int8 lowering multiplies zero-point-corrected int16 operands into int32 accumulators. A
# vectorised loop of that does a broadcast, a sign extension, a 32-bit multiply and an add per 16
# products; ``pmaddwd`` does 32 products and the pairwise adds in one instruction. The intrinsic takes
# two consecutive reduction steps (two input channels) for LANES output channels: the input pair is
# broadcast as one 32-bit word, the two weight rows are interleaved, and the products are added to the
# accumulators.

PMADDWD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd"}


def _pair_dot_intrin(lanes: int):
    """Register (once) and name the pair dot-product tensor intrinsic for ``lanes`` int32 outputs."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"edgedl_pmaddwd_{lanes}"
    try:
        TensorIntrin.get(name)
        return name
    except Exception:  # noqa: BLE001 - not registered yet
        pass
    intrinsic = PMADDWD[lanes]
    wide = lanes * 2
    order = [j // 2 + (j % 2) * lanes for j in range(wide)]
    vec16, vec32, vec16w = f"int16x{lanes}", f"int32x{lanes}", f"int16x{wide}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (T.int64(2),), "int16", offset_factor=1)
        B = T.match_buffer(b, (T.int64(2), T.int64(lanes)), "int16", offset_factor=1)
        C = T.match_buffer(c, (T.int64(lanes),), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:2, 0:lanes])
            T.writes(C[0:lanes])
            for i, k in T.grid(T.int64(lanes), T.int64(2)):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk, vi])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int64()
        sb0 = T.int64()
        sb1 = T.int64()
        sc = T.int64()
        A = T.match_buffer(a, (T.int64(2),), "int16", offset_factor=1, strides=[sa])
        B = T.match_buffer(b, (T.int64(2), T.int64(lanes)), "int16", offset_factor=1, strides=[sb0, sb1])
        C = T.match_buffer(c, (T.int64(lanes),), "int32", offset_factor=1, strides=[sc])
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:2, 0:lanes])
            T.writes(C[0:lanes])
            pair = T.reinterpret("int32", A.vload([T.int64(0)], "int16x2"))
            row0 = B.vload([T.int64(0), T.int64(0)], vec16)
            row1 = B.vload([T.int64(1), T.int64(0)], vec16)
            woven = T.Shuffle([row0, row1], order)
            C[T.ramp(T.int64(0), 1, lanes)] = C[T.ramp(T.int64(0), 1, lanes)] + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic), T.reinterpret(vec16w, T.broadcast(pair, lanes)), woven,
                dtype=vec32)

    TensorIntrin.register(name, desc, impl)
    return name


# ---------------------------------------------------------------------------------------------------
# tuning that starts from these schedules


def seed_database(db, tasks, target, builder, runner) -> dict:
    """Measure each task's default schedule with MetaSchedule's own builder and runner (here or on
    the device) and commit it to the database as a tuning record.

    The search then starts from it (the evolutionary search seeds its population with the database's
    best records), and a build from the database never picks a tuned candidate slower than the
    default: the database keeps the fastest record per kernel, whichever made it.

    Returns:
        ``{"seeded": how many tasks got a record, "seed_us": {task name: measured microseconds}}``.
    """
    from tvm.s_tir import meta_schedule as ms

    todo = []
    for task in tasks:
        mod = task.dispatched[0]
        sch = apply_rules(mod["main"], target)
        if sch is not None:
            todo.append((task, mod, sch))
    if not todo:
        return {"seeded": 0, "seed_us": {}}
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch in todo])
    inputs, kept = [], []
    for (task, mod, sch), result in zip(todo, built):
        if result.error_msg is not None:
            log.debug("seed %s: build failed: %s", task.task_name, result.error_msg[:300])
        if result.error_msg is None:
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cuda" if target.kind.name == "cuda" else "cpu",
                                                ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
            kept.append((task, mod, sch))
    seeded = {}
    for (task, mod, sch), future in zip(kept, runner.run(inputs)):
        result = future.result()
        if result.error_msg is not None or not result.run_secs:
            log.debug("seed %s: run failed: %s", task.task_name, (result.error_msg or "")[-600:])
            continue
        secs = [float(s) for s in result.run_secs]
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), secs, target,
                                                  ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        seeded[task.task_name] = round(1e6 * sum(secs) / len(secs), 2)
    return {"seeded": len(seeded), "seed_us": seeded}


def build_from_database(db, mod, target):
    """The Relax executable of ``mod`` (legalized and fused) with each kernel's best database record,
    and the default schedules above for the kernels the database has none for (TVM's own
    ``compile_relax`` leaves those as unscheduled loops)."""
    import tvm
    from tvm import relax

    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    with target, db, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        mod = dl.ApplyDefaultSchedule(*schedule_rules())(mod)
        return relax.build(mod, target=target)


def time_executable(ex, mod, runs: int = 100) -> float:
    """Median microseconds of one call of ``ex``'s ``main`` on this host's CPU, on random inputs shaped
    as ``mod``'s ``main`` takes them (for choosing between two builds of one model)."""
    import time

    import numpy as np
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    args = []
    for param in mod["main"].params:
        info = param.ty if hasattr(param, "ty") else param.struct_info
        shape = [int(s) for s in info.shape.values]
        dtype = str(info.dtype)
        data = (rng.random(shape).astype(dtype) if dtype.startswith("float")
                else rng.integers(-100, 100, shape).astype(dtype))
        args.append(tvm.runtime.tensor(data))
    main = vm["main"]
    for _ in range(10):
        main(*args)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        main(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)
