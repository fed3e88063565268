"""The optimization pipeline: a trained Keras model -> pruned -> quantized ``.tflite``, each step measured.

:func:`optimize` reads top-down as its stages: check the options, find the model and its recipe,
load the data, measure the float baseline, then structured pruning, unstructured pruning,
quantization-aware training and conversion, each measured the same way (test accuracy, size,
gzip'd size, parameters, MACs, sparsity: :mod:`edgedl.optimize.measure`), then, if asked, the
integer model's error layer by layer (:mod:`edgedl.optimize.quant_report`). It returns an
:class:`~edgedl.report.optimize.OptimizeReport` that holds the final Keras model and ``.tflite`` and
knows how to save and format itself.
"""

from __future__ import annotations

import logging
import time

from edgedl.errors import InputFileError, OptionError
from edgedl.keras_utils import set_determinism
from edgedl.modelio import ModelAndRecipe, resolve_model
from edgedl.optimize.finetune import DISTILL_ALPHA, FineTune, Teacher
from edgedl.optimize.measure import Export, Measure, calibration_samples, versions
from edgedl.optimize.options import OptimizeOptions, check_architecture
from edgedl.optimize.quant_report import quant_report
from edgedl.optimize.selective import selective_stage
from edgedl.report.optimize import OptimizeReport

log = logging.getLogger(__name__)

QAT_METHOD = (
    "Batch norm folded into the layer before it; kernels fake-quantized per channel (symmetric int8, "
    "scale max|w|/127) and activations fake-quantized over moving-average ranges, with straight-through "
    "gradients, during fine-tuning; the fine-tuned float weights were then converted with full-int8 "
    "post-training quantization (activation ranges re-calibrated on representative data)."
)


def optimize(model, options: OptimizeOptions, *, progress: bool = True) -> OptimizeReport:
    """Prune and quantize a trained Keras model; measure every stage; write the results if asked.

    Stages, in order, each optional: structured pruning, unstructured magnitude pruning,
    quantization-aware training, conversion to ``.tflite``. Each pruning/QAT stage fine-tunes with
    the model's training recipe.

    Args:
        model: a ``.keras``/``.h5``/SavedModel path, a ``keras.Model``, or a zoo name (which is
            first trained with its recipe for ``options.epochs``, or the recipe's epochs).
        options: what to do (:class:`~edgedl.optimize.options.OptimizeOptions`; checked here unless
            it already is); with ``out_dir``, the results are written there.
        progress: show progress bars while training.

    Returns:
        OptimizeReport with the final Keras model, the ``.tflite`` and one measured row per stage.

    Raises:
        OptionError: an option out of range, or representative data of the wrong shape or dtype.
        InputFileError: the model file is missing or not a model.
        ModelError: structured pruning meets a layer it cannot rebuild.
        UnsupportedOperatorError: the model holds operators the quantization mode cannot take.

    Example:
        >>> report = optimize("lenet.keras", OptimizeOptions(prune=0.8, quantize="int8", out_dir="out"))  # doctest: +SKIP
        >>> report.stage("int8").accuracy > 0.98  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    options = options.check()
    source = resolve_model(model)
    data, split = _load_data(source, options)
    set_determinism(options.deterministic)
    measure = Measure(data.x_test, data.y_test, _export_for(options, data.x_train))
    tune = _fine_tuning(options, source, data, progress)
    current, trained_here = _trained_model(source, options, split, progress)
    if options.distill:
        tune = tune.but(teacher=Teacher(current, DISTILL_ALPHA if options.distill_alpha is None else options.distill_alpha))
    stages = [measure.keras("baseline", "float32 Keras model" + (
        f", trained here for {trained_here} epochs" if trained_here else ""), current)]
    parts = {}
    if options.structured is not None:
        current, row, parts["structured"] = _structured_stage(current, options.structured, tune, measure)
        stages.append(row)
    if options.prune is not None:
        current, row, parts["pruned_layers"], parts["skipped_layers"] = _prune_stage(current, options.prune, tune, measure)
        stages.append(row)
    current, tflite, rows, parts["qat"] = _convert_stage(current, options, tune, measure)
    if options.selective:  # layers kept in float32 or int16x8, or as many as --max-drop needs
        tflite, rows, parts["selective"] = selective_stage(current, options, measure, rows)
    if options.quant_report:  # the integer .tflite's error, layer by layer
        parts["quant_report"] = quant_report(current, tflite, options.quantize, measure.export, measure.x,
                                              selective=parts.get("selective"))
    report = OptimizeReport(
        model=current, tflite=tflite, stages=stages + rows, versions=versions(), **parts,
        source={"name": source.name, "path": source.path, "zoo_model": source.zoo_name, "trained_here_epochs": trained_here},
        data=_describe_data(data, options, measure.export), options=options.to_dict(),
        finetuning=_describe_finetuning(tune, source.recipe_from, options.deterministic),
    )
    report.wall_time_s = round(time.perf_counter() - start, 2)
    if options.out_dir is not None:
        report.save(options.out_dir)
    return report


def _load_data(source: ModelAndRecipe, options: OptimizeOptions):
    """(the data set, the split asked of it): the architecture is checked against the options first."""
    from edgedl.data import DATASETS, ModelInput, load_data, load_dataset
    from edgedl.keras_utils import check_shapes

    if options.data is not None:
        if source.model is None:
            raise OptionError(f"'{source.name}' is a zoo name, trained here on a built-in data set; --data takes a "
                              f"trained model: train it first (edgedl train {source.name} -o {source.name}.keras), "
                              "or give --dataset")
        check_architecture(source.model, options)  # before anything slow
        from edgedl.modelio import metrics_beside

        recorded = metrics_beside(source.path).get("preprocessing") if source.path else None  # the model's preset
        model = ModelInput(tuple(source.model.input_shape[1:]), [t.name for t in source.model.inputs], source.path,
                           recorded)
        data = load_data(data=options.data, preprocess=options.preprocess, limit=options.limit, seed=options.seed,
                         model=model)
        if not data.labelled:
            raise InputFileError(options.data, "has no labels; optimize fine-tunes and measures accuracy on labelled "
                                               "samples: give a .npz with x and y, or a folder with class sub-folders")
        check_shapes(source.model, data)
        return data, data.split
    dataset = options.dataset or source.dataset
    if dataset is None:
        raise OptionError(f"optimizing '{source.name}' needs --dataset: it has no zoo recipe and no metrics JSON beside it")
    split = source.split if dataset == source.dataset else None
    info = DATASETS.get(dataset)  # an untrained zoo model shaped for the data set, to check before training
    probe = source.build(*((info.input_shape, info.num_classes) if info is not None else ()))
    check_architecture(probe, options)  # before anything slow
    data = load_dataset(dataset, data_dir=options.data_dir, split=split, limit=options.limit, seed=options.seed)
    check_shapes(probe, data)
    return data, split


def _export_for(options: OptimizeOptions, x_train) -> Export:
    """How every ``.tflite`` of the run is written, calibrating on ``--representative`` or training samples."""
    rep = options.representative
    calibration = rep if rep is not None else calibration_samples(x_train, options.num_calibration, options.seed)
    return Export(calibration, options.io_type, options.num_calibration, options.per_channel, options.strip_names)


def _fine_tuning(options: OptimizeOptions, source: ModelAndRecipe, data, progress: bool) -> FineTune:
    """How each stage fine-tunes: the recipe, at ``--epochs`` or a default share of its epochs."""
    from edgedl.optimize.finetune import default_epochs
    from edgedl.optimize.structured import check_schedule_epochs

    epochs = options.epochs or default_epochs(source.recipe, len(data.x_train))
    if options.structured is not None and options.epochs is None:  # given epochs were checked with the options
        check_schedule_epochs(options.structured.schedule, epochs, given=False)
    return FineTune(data.x_train, data.y_train, source.recipe, epochs, seed=options.seed, progress=progress,
                    lr_scale=options.lr_scale)


def _trained_model(source: ModelAndRecipe, options: OptimizeOptions, split, progress: bool):
    """The model to optimize, and the epochs it was trained for here (None: it came trained)."""
    if source.model is not None:
        return source.model, None
    from edgedl.train import TrainOptions, train

    result = train(source.zoo_name, TrainOptions(
        dataset=options.dataset or source.dataset, split=split, epochs=options.epochs, seed=options.seed,
        limit=options.limit, data_dir=options.data_dir, deterministic=options.deterministic), progress=progress)
    return result.model, result.metrics["epochs"]


def _structured_stage(model, spec, tune: FineTune, measure: Measure):
    """Structured pruning: (the smaller model, its report row, the plan's summary)."""
    from edgedl.optimize.structured import describe_cut, prune_structured

    t = time.perf_counter()
    result = prune_structured(model, spec, tune)
    where = describe_cut(spec.residual, spec.layers, spec.align, spec.schedule, tune.epochs)
    where = f" ({where})" if where else ""
    row = measure.keras("structured", f"{100 * spec.ratio:.0f}% of channels removed{where}, fine-tuned", result.model,
                        wall_s=round(time.perf_counter() - t, 2))
    return result.model, row, result.summary


def _prune_stage(model, spec, tune: FineTune, measure: Measure):
    """Unstructured pruning: (the pruned model, its report row, the pruned layers, the layers left dense)."""
    from edgedl.optimize.prune import prune

    t = time.perf_counter()
    result = prune(model, spec, tune)
    zeros = sum(r["total"] - r["nonzero"] for r in result.layers)
    total = sum(r["total"] for r in result.layers)
    uniform = isinstance(spec.sparsity, float) and not spec.layers
    whose = "" if uniform else "the pruned layers' "
    what = f"{100 * zeros / max(total, 1):.0f}% of {whose}kernel weights zeroed" + ("" if uniform else " (targets per layer)")
    how = f"{spec.scope}, {spec.schedule}" + (f", blocks of {spec.block}" if spec.block > 1 else "")
    row = measure.keras("pruned", f"{what} ({how}), fine-tuned", result.model, wall_s=round(time.perf_counter() - t, 2))
    return result.model, row, result.layers, result.skipped


def _convert_stage(model, options: OptimizeOptions, tune: FineTune, measure: Measure):
    """Convert (after QAT if asked); returns (final Keras model, .tflite, stage rows, QAT summary)."""
    export, mode = measure.export, options.quantize
    if mode is None:
        return model, export(model, "none"), [], None
    scales = "" if export.per_channel else ", per-tensor weight scales"
    if not options.qat:
        tflite = export(model, mode)
        return model, tflite, [measure.tflite(mode, f"{mode} post-training quantization{scales}", tflite, model,
                                              f"{mode} tflite")], None

    from edgedl.keras_utils import evaluate
    from edgedl.optimize import qat

    t = time.perf_counter()
    ptq = export(model, "int8")
    rows = [measure.tflite("ptq", f"int8 post-training quantization without QAT (for comparison){scales}", ptq,
                           model, "int8 tflite")]
    result = qat.quantization_aware_training(model, tune, keep_sparsity=options.prune is not None)
    _, fq_accuracy = evaluate(result.fake_quant_model, measure.x, measure.y)
    tflite = export(result.model, "int8")
    rows.append(measure.tflite("qat", f"int8 after quantization-aware training{scales}", tflite, result.model,
                               "int8 tflite", fake_quant_accuracy=fq_accuracy, wall_s=round(time.perf_counter() - t, 2)))
    summary = {"method": QAT_METHOD, "folded": result.folded, "fake_quant_accuracy": fq_accuracy,
               "lr_scale": qat.LR_SCALE, "not_fake_quantized": result.plain}
    return result.model, tflite, rows, summary


def _describe_data(data, options: OptimizeOptions, export: Export) -> dict:
    """The report's ``data``: which data set and split, how many samples, where calibration came from."""
    integer = options.quantize in ("int8", "int16x8")
    described = {"dataset": data.name, "split": data.split, "num_train": int(len(data.x_train)),
                 "num_test": int(len(data.x_test)), "limit": options.limit,
                 "num_calibration": int(min(len(export.calibration), options.num_calibration)) if integer else 0,
                 "calibration_from": "--representative" if options.representative is not None else "training split"}
    if data.file is not None:  # a file the user brought: which one, and the steps that made its inputs
        described.update(file=data.file, preprocessing=data.preprocessing)
    return described


def _describe_finetuning(tune: FineTune, recipe_from: str, deterministic: bool) -> dict:
    """The report's ``finetuning``: epochs, optimizer, learning rate, batch, where the recipe came from."""
    from edgedl.optimize import qat

    r, teacher = tune.recipe, tune.teacher
    return {"epochs": tune.epochs, "optimizer": r.get("optimizer", "adam"),
            "learning_rate": float(r.get("learning_rate", 1e-3)) * tune.rate_scale, "lr_scale": tune.rate_scale,
            "qat_lr_scale": qat.LR_SCALE, "batch_size": r.get("batch_size"), "schedule": r.get("schedule"),
            "augment": r.get("augment"), "recipe_from": recipe_from, "deterministic": bool(deterministic),
            "distillation": None if teacher is None else {
                "teacher": "the float baseline", "alpha": teacher.alpha, "temperature": teacher.temperature}}
