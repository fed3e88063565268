"""Fidelity that cannot pass by accident: a build is held to the reference by accuracy on labelled
samples, by top-1 agreement only where outputs are class scores, and by the error of every output
(RMSE, cosine, SNR); a reference that predicts one class for every sample fails the check."""

import numpy as np
import pytest

from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import BackendError, OptionError
from edgedl.reference import Bounds, fidelity


def test_class_scores_get_agreement_accuracy_and_the_drop_against_the_reference():
    reference = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    outputs = np.eye(4)[[0, 1, 2, 0, 0, 1]] * 0.9
    f = fidelity(reference, outputs, labels=np.array([0, 1, 2, 3, 0, 2]))
    assert f["top1_agreement"] == pytest.approx(5 / 6) and f["reference_classes"] == 4
    assert f["reference_accuracy"] == pytest.approx(5 / 6) and f["accuracy"] == pytest.approx(4 / 6)
    assert f["accuracy_drop"] == pytest.approx(1 / 6)
    assert 0 < f["cosine"] < 1 and f["rmse"] > 0 and f["snr_db"] < 10


def test_a_single_output_has_no_top1_only_its_error():
    reference = np.linspace(-1, 1, 50).reshape(50, 1)
    f = fidelity(reference, reference + 0.01)
    assert "top1_agreement" not in f and "accuracy" not in f
    assert f["max_abs_error"] == pytest.approx(0.01) and f["rmse"] == pytest.approx(0.01)
    assert f["snr_db"] == pytest.approx(10 * np.log10(np.mean(reference ** 2) / 1e-4))


def test_identical_outputs_record_a_finite_snr():
    f = fidelity(np.eye(3), np.eye(3))
    assert f["snr_db"] == 200.0 and f["max_abs_error"] == 0.0 and f["cosine"] == 1.0


def test_each_bound_names_what_it_measured_and_the_option_that_moves_it():
    f = fidelity(np.eye(4)[[0, 1, 2, 3]], np.eye(4)[[0, 1, 2, 2]], labels=np.array([0, 1, 2, 3]))
    problems = Bounds(max_disagreement=0.1, max_accuracy_drop=0.1, min_snr_db=10).check(f)
    assert len(problems) == 3
    assert problems[0].startswith("top-1 agreement with the reference 75.0% is below 90.0%")
    assert "--max-disagreement" in problems[0]
    assert problems[1].startswith("accuracy 75.0% is 25.0 points below the reference's 100.0%")
    assert "--max-accuracy-drop" in problems[1]
    assert "signal-to-noise ratio" in problems[2] and "--min-snr" in problems[2]
    assert Bounds(max_disagreement=0.25, max_accuracy_drop=0.25, min_snr_db=-10).check(f) == []


@pytest.mark.slow
def test_a_model_that_predicts_one_class_on_the_data_fails_the_compile(trained_lenet, tmp_path):
    """A model that standardises 0-255 pixels itself (to [-1, 1]), given the digits as 0-1: every
    sample reaches the network as nearly -1 everywhere and gives the same class, so both sides of the
    check would agree on it; the compile refuses instead of passing at 10%."""
    import keras

    inputs = keras.Input((28, 28, 1))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    wrapped = keras.Model(inputs, trained_lenet["model"](scaled))
    wrapped.save(tmp_path / "lenet255.keras")
    out = tmp_path / "lenet255.edgedl"
    with pytest.raises(OptionError, match=r"lenet255\.keras: the model predicts class \d for all 100 samples of digits "
                                          r"\(\d+% accurate over 10 classes\): the samples are not what it expects .* or the "
                                          r"model is not trained, so no check on them means anything: give the data the "
                                          r"way the model was trained on it \(--data with --preprocess\)$"):
        compile_model(str(tmp_path / "lenet255.keras"), "x86_64", str(out),
                      CompileOptions(backend="litert", dataset="digits", num_samples=100))
    assert not out.exists()


@pytest.mark.slow
def test_a_regression_model_is_checked_by_its_error_not_by_top1(tmp_path):
    import keras

    x = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.save(tmp_path / "regressor.keras")
    bundle = compile_model(str(tmp_path / "regressor.keras"), "x86_64", str(tmp_path / "r.edgedl"),
                           CompileOptions(backend="litert", dataset="digits", num_samples=50))
    f = bundle.manifest.fidelity
    assert "top1_agreement" not in f and "accuracy" not in f and f["snr_db"] > 60
    assert "SNR" in bundle.manifest.fidelity_line() and "top-1" not in bundle.manifest.fidelity_line()
    assert model.predict(x, verbose=0).shape == (1, 1)


@pytest.mark.slow
def test_an_snr_bound_the_int8_build_cannot_meet_fails_the_compile_and_writes_nothing(trained_lenet, tmp_path):
    out = tmp_path / "strict.edgedl"
    with pytest.raises(BackendError, match=r"fidelity check failed for litert on x86_64: its outputs' signal-to-noise "
                                           r"ratio against the reference is [\d.]+ dB, below 150 dB"):
        compile_model(str(trained_lenet["keras"]), "x86_64", str(out),
                      CompileOptions(backend="litert", quantize="int8", num_samples=50, min_snr_db=150))
    assert not out.exists()


@pytest.mark.slow
def test_the_bundle_headline_is_accuracy_against_the_reference_on_named_samples(trained_lenet, tmp_path):
    bundle = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "b.edgedl"),
                           CompileOptions(backend="litert", quantize="int8", num_samples=50))
    line = bundle.manifest.fidelity_line()
    assert line.startswith("accuracy ") and "(reference " in line and line.endswith("on 50 samples of digits")
    assert bundle.manifest.fidelity["accuracy_drop"] <= 0.05


def _model_for_0_255_pixels(trained_lenet):
    """LeNet behind a Rescaling that takes 0-255 pixels to its 0-1: a model trained the way older
    tools exported them."""
    import keras

    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, trained_lenet["model"](keras.layers.Rescaling(1 / 255)(inputs)))


@pytest.mark.slow
def test_data_outside_a_quantized_inputs_range_is_refused_by_name(trained_lenet, tmp_path):
    from edgedl.convert import to_tflite
    from edgedl.data import load_dataset

    model = _model_for_0_255_pixels(trained_lenet)
    calibration = load_dataset("digits").x_train[:200] * 255.0
    tflite = tmp_path / "lenet255_int8.tflite"
    tflite.write_bytes(to_tflite(model, "int8", representative=calibration, io_type="int8"))
    out = tmp_path / "x.edgedl"
    with pytest.raises(OptionError, match=r"lenet255_int8\.tflite: data set 'digits' gives inputs in \[0, 1\], but the "
                                          r"model's quantized input covers \[0, 25\d(\.\d+)?\]"):
        compile_model(str(tflite), "x86_64", str(out), CompileOptions(backend="litert", dataset="digits"))
    assert not out.exists()


@pytest.mark.slow
def test_int8_without_data_needs_calibration_random_and_then_says_its_inputs_were_synthetic(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7, 3)), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])
    model.save(tmp_path / "odd.keras")
    with pytest.raises(OptionError, match=r"odd\.keras: -q int8 calibrates on real samples and no data set fits its "
                                          r"input \(7, 3\); give your own with --data \(a \.npz, \.npy or a folder of "
                                          r"images or wavs\), name one with --dataset, or calibrate on synthetic inputs "
                                          r"with --calibration random"):
        compile_model(str(tmp_path / "odd.keras"), "x86_64", str(tmp_path / "a.edgedl"),
                      CompileOptions(backend="litert", quantize="int8"))
    bundle = compile_model(str(tmp_path / "odd.keras"), "x86_64", str(tmp_path / "b.edgedl"),
                           CompileOptions(backend="litert", quantize="int8", calibration="random", num_samples=30,
                                          max_disagreement=0.2))  # an untrained model's near-ties on noise
    m = bundle.manifest
    assert m["options"]["calibration"] == "random" and m["samples"]["synthetic"] == [0.0, 1.0]
    assert "accuracy" not in m.fidelity and m.fidelity_line().endswith("on 30 synthetic inputs (no accuracy)")


@pytest.mark.slow
def test_tflite_micro_is_held_to_the_reference_kernels_it_implements(trained_lenet, tmp_path):
    """An int8 .tflite's reference for TFLite Micro is LiteRT's reference kernels, whose integer
    arithmetic TFLite Micro implements, and the manifest says so; LiteRT's own build is held to XNNPACK,
    which it runs. TFLite Micro's outputs differ from the reference kernels' on fewer values than from
    XNNPACK's (measured here on LeNet: 0.4% against 4%; on an int8 ResNet-8: 0.2% against 9%)."""
    from edgedl.data import load_dataset
    from edgedl.reference import reference_outputs
    from edgedl.runtime import load

    tflm = compile_model(str(trained_lenet["int8"]), "cortex_m7", str(tmp_path / "m7.edgedl"),
                         CompileOptions(backend="tflm", num_samples=100))
    f = tflm.manifest.fidelity
    assert f["reference"] == "LiteRT on lenet_int8.tflite (reference kernels)" and f["top1_agreement"] == 1.0
    litert = compile_model(str(trained_lenet["int8"]), "x86_64", str(tmp_path / "x86.edgedl"),
                           CompileOptions(backend="litert", num_samples=100))
    assert litert.manifest.fidelity["reference"] == "LiteRT on lenet_int8.tflite (xnnpack kernels)"
    assert litert.manifest.fidelity["max_abs_error"] == 0.0  # the same engine, the same kernels

    x = load_dataset("digits").x_test[:300]
    micro = load(tmp_path / "m7.edgedl").predict(x)
    differ = {k: np.mean(micro != reference_outputs(trained_lenet["int8"], x, kernels=k)) for k in ("reference", "xnnpack")}
    assert differ["reference"] < differ["xnnpack"], differ


@pytest.mark.slow
def test_every_output_of_a_two_headed_model_is_checked_and_returned_by_the_runtime(trained_lenet, tmp_path):
    """A classifier with a second, regression head: compile checks each output against its own
    reference (agreement and accuracy for the classes, the error of both), and the runtime returns both."""
    import keras

    from edgedl.data import load_dataset
    from edgedl.runtime import load

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    head = keras.layers.Dense(3, name="box")(keras.layers.Flatten()(inputs))
    two = keras.Model(inputs, [trained_lenet["model"](inputs), head])
    two.save(tmp_path / "two.keras")
    for quantize in ("none", "int8"):
        bundle = compile_model(str(tmp_path / "two.keras"), "x86_64", str(tmp_path / f"two-{quantize}.edgedl"),
                               CompileOptions(backend="litert", quantize=quantize, dataset="digits", num_samples=50))
        f = bundle.manifest.fidelity
        assert [o["index"] for o in f["outputs"]] == [0, 1] and "top1_agreement" in f["outputs"][0]
        assert "top1_agreement" not in f["outputs"][1] and f["outputs"][1]["snr_db"] > 10
        assert f["reference_accuracy"] > 0.7 and f["accuracy_drop"] <= 0.05 and len(bundle.manifest["outputs"]) == 2
        x = load_dataset("digits").x_test[:5]
        outputs = load(bundle.path).predict(x)  # in the compiled model's order (the manifest's outputs)
        assert sorted(o.shape for o in outputs) == [(5, 3), (5, 10)]
        boxes = next(o for o in outputs if o.shape == (5, 3))
        if quantize == "none":
            assert np.allclose(boxes, two.predict(x, verbose=0)[1], atol=1e-4)
    with pytest.raises(BackendError, match=r"output 1's signal-to-noise ratio against the reference is [\d.]+ dB, "
                                           r"below 150 dB"):
        compile_model(str(tmp_path / "two.keras"), "x86_64", str(tmp_path / "strict.edgedl"),
                      CompileOptions(backend="litert", quantize="int8", dataset="digits", num_samples=50,
                                     min_snr_db=150))
