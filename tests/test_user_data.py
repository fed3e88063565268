"""Data a user brings (``--data``): a .npz, a .npy, a folder of images or of wav files in class
sub-folders, preprocessed by a recorded spec, through compile, bench and optimize; bad files are one
error line that names the file and what was expected."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from edgedl.bundle import read_manifest
from edgedl.data import ModelInput, Preprocess, load_data, load_dataset, load_user_data
from edgedl.errors import InputFileError, OptionError

from cli_run import run_cli, the_error  # tests/cli_run.py


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The digits as a user would bring them: .npz (with and without a train split, and at the raw
    0..16 levels), .npy, and PNG files at the raw levels in class folders (10 per class)."""
    digits = load_dataset("digits")
    d = tmp_path_factory.mktemp("user_data")
    paths = {"split": d / "digits_split.npz", "test": d / "digits_test.npz", "npy": d / "digits.npy",
             "raw": d / "digits_raw.npz", "images": d / "images"}
    np.savez(paths["split"], x_train=digits.x_train, y_train=digits.y_train, x=digits.x_test, y=digits.y_test)
    np.savez(paths["test"], x=digits.x_test, y=digits.y_test)
    np.save(paths["npy"], digits.x_test[:40])
    levels = lambda x: np.round(x * 16).astype(np.uint8)  # noqa: E731  (back to the 0..16 of the 8x8 source)
    np.savez(paths["raw"], x_train=levels(digits.x_train), y_train=digits.y_train, x=levels(digits.x_test),
             y=digits.y_test)
    from PIL import Image

    for c in range(10):
        folder = paths["images"] / f"digit_{c}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.y_test == c)[:10]):
            Image.fromarray(levels(digits.x_test[index])[..., 0]).save(folder / f"{i}.png")
    return paths


def load_example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- loading


def test_a_npz_is_the_same_data_as_the_data_set_and_records_the_file(files):
    digits = load_dataset("digits", limit=50)
    ds = load_data(data=files["split"], limit=50, model=ModelInput((28, 28, 1)))
    assert np.array_equal(ds.x_train, digits.x_train) and np.array_equal(ds.y_train, digits.y_train)
    assert np.array_equal(ds.x_test, digits.x_test) and np.array_equal(ds.y_test, digits.y_test)
    assert ds.file == {"path": "digits_split.npz", "kind": "npz archive", "sha256": sha256(files["split"])}
    assert ds.split == "the file's x_train and x_test" and ds.classes == [str(c) for c in range(10)]
    alone = load_data(data=files["test"])  # no train split: the whole file is the test split, and trains too
    assert alone.split == "whole file, no split (train = test)" and len(alone.x_test) == 359
    assert alone.x_train is alone.x_test and alone.summary()["sizes"] == {"train": 359, "test": 359}
    unlabelled = load_data(data=files["npy"], model=ModelInput((28, 28, 1)))
    assert unlabelled.y_test is None and unlabelled.classes == [] and unlabelled.summary()["class_counts"]["test"] == {}


def test_images_in_class_folders_are_decoded_resized_and_scaled_as_the_spec_says(files):
    digits = load_dataset("digits")
    ds = load_user_data(files["images"], ["scale=1/16"], input_shape=(28, 28, 1))
    assert ds.classes == [f"digit_{c}" for c in range(10)] and ds.x_test.shape == (100, 28, 28, 1)
    first = digits.x_test[np.flatnonzero(digits.y_test == 0)[0]]
    assert np.abs(ds.x_test[0] - first).max() <= 1 / 32 + 1e-6  # the 0..16 levels, rounded, scaled back
    spec = ds.preprocessing["spec"]
    assert spec["resize"] == [28, 28] and spec["channels"] == "gray" and spec["scale"] == 1 / 16
    assert ds.file["kind"] == "image folder" and len(ds.file["sha256"]) == 64
    # the same steps, read back from the record, give the same inputs
    again = load_user_data(files["images"], Preprocess.from_record(ds.preprocessing))
    assert np.array_equal(again.x_test, ds.x_test)
    # resize and three channels in reverse order, then mean and std per channel
    rgb = load_user_data(files["images"], ["resize=14x14", "channels=bgr", "mean=1,2,3", "std=2"], limit=20)
    assert rgb.x_test.shape == (20, 14, 14, 3) and rgb.subset["method"].startswith("class-balanced")


def test_a_npz_may_name_its_array_after_the_model_input(files, tmp_path):
    digits = load_dataset("digits", limit=20)
    np.savez(tmp_path / "named.npz", image=digits.x_test, y=digits.y_test)
    ds = load_user_data(tmp_path / "named.npz", input_names=["image"], input_shape=(28, 28, 1))
    assert np.array_equal(ds.x_test, digits.x_test) and np.array_equal(ds.y_test, digits.y_test)
    with pytest.raises(InputFileError, match=r"the model has 2 inputs, so the archive needs one array per input, "
                                             r"named 'image', 'mask'"):
        load_user_data(tmp_path / "named.npz", input_names=["image", "mask"])


def test_a_preprocess_toml_given_or_beside_the_data_is_used_and_named(files, tmp_path):
    (tmp_path / "steps.toml").write_text("[preprocess]\nscale = 0.0625\nresize = [28, 28]\n")
    spec = Preprocess.parse([str(tmp_path / "steps.toml"), "offset=0.5"])  # a file, then options over it
    assert (spec.scale, spec.resize, spec.offset, spec.origin) == (0.0625, (28, 28), 0.5, "steps.toml + --preprocess")


def test_a_preprocess_toml_beside_the_data_is_used_and_named(files, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(files["images"], folder)
    (folder / "preprocess.toml").write_text('scale = "1/16"\nchannels = "gray"\n')
    ds = load_user_data(folder, input_shape=(28, 28, 1))
    assert ds.preprocessing["spec"]["scale"] == 1 / 16 and ds.preprocessing["spec_from"].endswith("preprocess.toml")
    (folder / "preprocess.toml").write_text("size = 3\n")
    with pytest.raises(InputFileError, match=r"preprocess.toml: unknown key\(s\) size; a preprocessing spec takes"):
        load_user_data(folder)


def test_wav_files_in_class_folders_give_the_fsdd_features(data_dir, tmp_path):
    from edgedl.data import fsdd

    recs = [r for r in fsdd.list_recordings(data_dir / "fsdd") if r.speaker == "jackson" and r.index < 3]
    for r in recs:
        (tmp_path / "wavs" / f"d{r.digit}").mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, tmp_path / "wavs" / f"d{r.digit}" / r.path.name)
    for kind, shape in (("logmel", (61, 40, 1)), ("mfcc", (61, 13, 1))):
        ds = load_user_data(tmp_path / "wavs", input_shape=shape)  # the features follow the model's input
        mean, std = fsdd.normalisation(kind)
        expected = ((fsdd.raw_features(recs, kind) - mean) / std)[..., None]
        assert ds.x_test.shape == (30, *shape) and np.allclose(ds.x_test, expected, atol=1e-5)
        assert list(ds.y_test) == [r.digit for r in recs] and ds.preprocessing["features"] == kind
        assert ds.preprocessing["spec_from"] == "defaults"
    # the record is FSDD's kind of description: the example KWS app rebuilds the same features from it
    app = load_example("kws_app")
    features = app.Features(ds.preprocessing)
    got = np.stack([features(app.read_wav(str(r.path), 8000)) for r in recs[:3]])
    np.testing.assert_allclose(got, ds.x_test[:3], atol=1e-4)
    # a model trained on fsdd records the fsdd preset: wav files given to it get the same steps
    recorded = load_dataset("fsdd", data_dir=data_dir, limit=1).preprocessing
    again = load_user_data(tmp_path / "wavs", recorded=recorded, input_shape=(61, 40, 1))
    assert again.preprocessing["spec_from"] == "the model's recorded preprocessing"
    assert np.array_equal(again.x_test, load_user_data(tmp_path / "wavs", input_shape=(61, 40, 1)).x_test)


def test_bad_files_are_one_error_that_names_the_file_and_what_was_expected(files, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match=r"empty: holds no images or .wav files; expected class sub-folders"):
        load_user_data(tmp_path / "empty")
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InputFileError, match=r"broken.png: not a readable image"):
        load_user_data(tmp_path / "bad")
    np.savez(tmp_path / "other.npz", inputs=np.zeros((3, 4)), labels=np.zeros(3))
    with pytest.raises(InputFileError, match=r"other.npz: holds inputs, labels; expected an array 'x' of inputs"):
        load_user_data(tmp_path / "other.npz")
    np.savez(tmp_path / "small.npz", x=np.zeros((3, 8, 8)))
    with pytest.raises(InputFileError, match=r"small.npz: its samples have shape \(8, 8\); the model takes \(28, 28, 1\)"):
        load_user_data(tmp_path / "small.npz", input_shape=(28, 28, 1))
    np.savez(tmp_path / "labels.npz", x=np.zeros((3, 4)), y=np.array([0.5, 1, 2]))
    with pytest.raises(InputFileError, match=r"labels.npz: array 'y' holds non-integer values"):
        load_user_data(tmp_path / "labels.npz")
    for name, message in (("bad.npz", "not a .npz archive (not a zip file)"), ("bad.npy", "not a .npy array (no NumPy header)")):
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(InputFileError, match=rf"{name}: {re.escape(message)}; expected"):
            load_user_data(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match=r"notes.txt: unknown data format '.txt'; --data takes a .npz, a .npy"):
        load_user_data(tmp_path / "notes.txt")
    with pytest.raises(OptionError, match=r"--preprocess resize and channels apply to image folders"):
        load_user_data(files["test"], ["resize=8x8"])
    with pytest.raises(OptionError, match=r"--preprocess got 'scale'; expected KEY=VALUE"):
        Preprocess.parse(["scale"])
    with pytest.raises(OptionError, match=r"give one of --dataset .* and --data .*, not both"):
        load_data("digits", files["test"])


# ---------------------------------------------------------------------------- compile, bench, optimize


def test_compile_with_a_npz_checks_on_exactly_what_the_data_set_gives(trained_lenet, files, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    by_name = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "name.edgedl"),
                            CompileOptions(backend="litert", quantize="int8", dataset="digits", num_samples=60))
    by_file = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "file.edgedl"),
                            CompileOptions(backend="litert", quantize="int8", data=str(files["split"]),
                                           num_samples=60))
    assert by_file.manifest["fidelity"] == by_name.manifest["fidelity"]  # same samples, same calibration
    fidelity = by_file.manifest["fidelity"]
    assert fidelity["reference_accuracy"] >= 0.75 and fidelity["accuracy"] >= 0.75  # LeNet after 3 epochs on digits
    samples = by_file.manifest["samples"]
    assert samples["dataset"] == "digits_split.npz" and samples["num_samples"] == 60
    assert samples["file"] == {"path": "digits_split.npz", "kind": "npz archive", "sha256": sha256(files["split"])}
    assert by_file.manifest["preprocessing"]["spec"]["scale"] == 1.0
    assert "data" not in by_file.manifest["options"]


def test_an_image_folder_through_compile_and_bench_with_the_manifest_steps(trained_lenet, files, tmp_path, capsys):
    bundle = tmp_path / "images.edgedl"
    code, out, err = run_cli(capsys, "compile", trained_lenet["keras"], "--target", "x86_64", "--backend", "litert",
                             "--data", files["images"], "--preprocess", "scale=1/16", "--samples", 100, "-o", bundle)
    assert code == 0, err
    manifest = read_manifest(bundle)
    checked = manifest["fidelity"]["accuracy"]
    assert checked > 0.8 and manifest["fidelity"]["samples"] == 100
    assert manifest["preprocessing"]["spec"]["scale"] == 1 / 16 and manifest["samples"]["file"]["kind"] == "image folder"

    quick = ("--runs", 3, "--repeats", 1, "--warmup", 0, "--json")
    code, out, err = run_cli(capsys, "bench", bundle, "--data", files["images"], *quick)
    assert code == 0, err
    accuracy = json.loads(out)["accuracy"]
    assert accuracy["accuracy"] == checked and accuracy["samples"] == 100  # the manifest's steps, the same samples
    assert accuracy["file"]["sha256"] == manifest["samples"]["file"]["sha256"]
    code, out, err = run_cli(capsys, "bench", bundle, "--data", files["images"], "--preprocess", "scale=-1/16",
                             "--preprocess", "offset=1", *quick)
    assert code == 0, err
    assert json.loads(out)["accuracy"]["accuracy"] < checked - 0.3  # other steps (inverted): other inputs

    # The digits preset: the model's metrics record the digits' steps for image files (0..16 levels, 28x28), so
    # without --preprocess, compile and bench feed the images exactly as above.
    preset = tmp_path / "preset.edgedl"
    code, out, err = run_cli(capsys, "compile", trained_lenet["keras"], "--target", "x86_64", "--backend", "litert",
                             "--data", files["images"], "--samples", 100, "-o", preset)
    assert code == 0, err
    m = read_manifest(preset)
    assert m["fidelity"]["accuracy"] == checked and m["preprocessing"]["spec"] == manifest["preprocessing"]["spec"]
    assert m["preprocessing"]["spec_from"] == "the model's recorded preprocessing"
    code, out, err = run_cli(capsys, "bench", tmp_path / "preset.edgedl", "--data", files["images"], *quick)
    assert code == 0, err
    assert json.loads(out)["accuracy"]["accuracy"] == checked
    code, out, err = run_cli(capsys, "bench", bundle, "--data", files["test"], *quick)  # a .npz: not image steps
    assert code == 0, err
    assert json.loads(out)["accuracy"]["preprocessing"]["scale"] == 1.0

    code, out, err = run_cli(capsys, "bench", bundle, *quick)  # the file it was checked on is not here: no accuracy
    assert code == 0, err
    assert "accuracy" not in (json.loads(out).get("accuracy") or {})


def test_unlabelled_samples_check_agreement_without_accuracy(trained_lenet, files, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    r = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "npy.edgedl"),
                      CompileOptions(backend="litert", data=str(files["npy"]), num_samples=30))
    assert r.manifest["fidelity"]["top1_agreement"] == 1.0 and r.manifest["fidelity"]["samples"] == 30
    assert "accuracy" not in r.manifest["fidelity"] and r.manifest["samples"]["file"]["kind"] == "npy array"


def test_compile_refuses_bad_data_in_one_line(trained_lenet, files, tmp_path, capsys):
    np.savez(tmp_path / "other.npz", inputs=np.zeros((3, 28, 28, 1)))
    np.savez(tmp_path / "small.npz", x=np.zeros((3, 8, 8, 1)), y=np.zeros(3, np.int64))
    (tmp_path / "empty").mkdir()
    base = ("compile", trained_lenet["keras"], "--target", "x86_64", "--backend", "litert", "-o", tmp_path / "x.edgedl")
    for args, message in (
        (("--data", tmp_path / "empty"), "empty: holds no images or .wav files; expected class sub-folders"),
        (("--data", tmp_path / "missing.npz"), "missing.npz: no such file or folder; --data takes a .npz, a .npy"),
        (("--data", tmp_path / "other.npz"), "other.npz: holds inputs; expected an array 'x' of inputs"),
        (("--data", tmp_path / "small.npz"), "small.npz: its samples have shape (8, 8, 1); the model takes (28, 28, 1)"),
        (("--data", files["test"], "--preprocess", "size=3"), "--preprocess: unknown key(s) size; the keys are resize"),
        (("--data", files["test"], "--dataset", "digits"), "give one of --dataset (a built-in data set) and --data"),
    ):
        assert message in the_error(*run_cli(capsys, *base, *args)[::2])


def test_optimize_and_bench_refuse_data_options_that_do_not_go_together(trained_lenet, files, tmp_path, capsys):
    for args, message in (
        (("optimize", trained_lenet["keras"], "-q", "int8", "-o", tmp_path / "o", "--data", files["test"], "--dataset",
          "digits"), "give one of --dataset (a built-in data set) and --data (a file or folder), not both"),
        (("optimize", trained_lenet["keras"], "-q", "int8", "-o", tmp_path / "o", "--preprocess", "scale=2"),
         "--preprocess applies to data given with --data or --representative: leave it out"),
        (("optimize", "lenet", "-q", "int8", "-o", tmp_path / "o", "--data", files["test"]),
         "'lenet' is a zoo name, trained here on a built-in data set; --data takes a trained model"),
        (("bench", tmp_path / "none.edgedl", "--preprocess", "scale=2"),
         "--preprocess applies to data given with --data: leave it out, or give --data"),
        (("bench", tmp_path / "none.edgedl", "--data", files["test"], "--preprocess", "scale=two"),
         "--preprocess scale must be a number (e.g. 0.5 or 1/255), got 'two'"),
        (("optimize", trained_lenet["keras"], "-q", "int8", "-o", tmp_path / "o", "--data", tmp_path / "nothing"),
         "nothing: no such file or folder; --data takes"),
    ):
        assert message in the_error(*run_cli(capsys, *args)[::2])


def test_optimize_fine_tunes_and_calibrates_on_files(trained_lenet, files):
    from edgedl.optimize import OptimizeOptions, optimize

    # the npz at the raw 0..16 levels, the images the calibration: one spec scales both
    report = optimize(str(trained_lenet["keras"]), OptimizeOptions(
        quantize="int8", data=str(files["raw"]), representative=str(files["images"]), preprocess=["scale=1/16"]),
        progress=False)
    baseline, int8 = report.stages[0].accuracy, report.stages[-1].accuracy
    assert baseline > 0.8 and int8 >= baseline - 0.03
    d = report.data
    assert d["file"]["sha256"] == sha256(files["raw"]) and d["num_test"] == 359 and d["num_train"] == 1438
    assert d["calibration_from"] == "--representative" and d["num_calibration"] == 100
    assert d["preprocessing"]["spec"]["scale"] == 1 / 16
    # PNG files at the digits' levels, no --preprocess: the model's recorded digits preset scales them
    images = optimize(str(trained_lenet["keras"]), OptimizeOptions(quantize="float16", data=str(files["images"])),
                      progress=False)
    assert images.stages[0].accuracy > 0.8 and images.data["num_test"] == 100
    assert images.data["preprocessing"]["spec_from"] == "the model's recorded preprocessing"
    with pytest.raises(InputFileError, match="digits.npy: has no labels; optimize fine-tunes and measures accuracy"):
        optimize(str(trained_lenet["keras"]), OptimizeOptions(quantize="int8", data=str(files["npy"])), progress=False)


@pytest.mark.slow
def test_the_runtime_reads_image_files_by_the_steps_the_bundle_records(trained_lenet, files, tmp_path):
    """An application hands the runtime PNG files as a camera would give them; the bundle's recorded
    digits preset (0..16 levels, 28x28, gray) turns them into the inputs compile checked."""
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.runtime import load

    bundle = compile_model(str(trained_lenet["keras"]), "x86_64", str(tmp_path / "l.edgedl"),
                           CompileOptions(backend="litert", quantize="int8", num_samples=50))
    model = load(bundle.path)
    pngs = sorted(files["images"].glob("digit_*/*.png"))
    labels = np.array([int(p.parent.name.removeprefix("digit_")) for p in pngs])
    x = model.inputs_from_files(pngs)
    assert x.shape == (100, 28, 28, 1)
    same = load_user_data(files["images"], Preprocess.from_record(bundle.manifest["preprocessing"]),
                          input_shape=(28, 28, 1))
    assert np.allclose(np.sort(x.ravel()), np.sort(same.x_test.ravel()))
    assert np.mean(model.predict(x).argmax(-1) == labels) > 0.8
    with pytest.raises(InputFileError, match=r"notes.txt: not an image"):
        model.inputs_from_files([tmp_path / "notes.txt"])
