"""The examples under examples/, each run for real: the keyword-spotting app on FSDD recordings, the C++
TVM program against the Python runtime, and the TFLite Micro project's generated files and C array."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args, cwd=None, timeout=600):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def edgedl(*args):
    return run(sys.executable, "-m", "edgedl.cli.main", *args)


@pytest.fixture(scope="module")
def lenet(trained_lenet):
    """The shared trained LeNet's .keras, with its metrics (the data set and preprocessing) beside it."""
    return trained_lenet["keras"]


# ----- examples/kws_app.py: keyword spotting with only the runtime -----

# Runs the app with TensorFlow and Keras made unimportable, then reports whether any got imported anyway.
APP_WRAPPER = """
import importlib.abc, json, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "click"))
print("MODULES " + json.dumps(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def ds_cnn(data_dir, tmp_path_factory):
    """DS-CNN trained 3 epochs on FSDD (official split), compiled for this host: LiteRT, int8."""
    from edgedl.compile import CompileOptions, compile_model
    from edgedl.train import TrainOptions, train

    d = tmp_path_factory.mktemp("kws")
    keras_path, _ = train("ds_cnn", TrainOptions(data_dir=data_dir, epochs=3), progress=False).save(d / "ds_cnn.keras")
    bundle = d / "ds_cnn.edgedl"
    compile_model(str(keras_path), "x86_64", str(bundle),
                  CompileOptions(backend="litert", quantize="int8", data_dir=str(data_dir), num_samples=50,
                                 max_disagreement=0.05))
    return bundle


def official_test_recordings(data_dir, count=30):
    """``count`` recordings of the official test split (index 0-4), every digit, three speakers."""
    folder = data_dir / "fsdd" / "recordings"
    picked = []
    for i in range(count):
        digit, speaker = i % 10, ("george", "jackson", "theo", "nicolas", "lucas", "yweweler")[i // 10]
        picked.append(folder / f"{digit}_{speaker}_{(digit + i // 10) % 5}.wav")
    assert all(p.is_file() for p in picked)
    return picked




def test_kws_app_spots_digits_better_than_chance_without_tensorflow(ds_cnn, data_dir):
    wavs = official_test_recordings(data_dir)
    proc = run(sys.executable, "-c", APP_WRAPPER, EXAMPLES / "kws_app.py", ds_cnn, *wavs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = json.loads(re.search(r"^MODULES (.*)$", proc.stderr, re.M)[1])
    assert modules == []  # neither TensorFlow, Keras nor click: the runtime alone
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(wavs)
    correct = 0
    for wav, line in zip(wavs, lines):
        path, digit, confidence = line.split("\t")
        assert path == str(wav) and digit in "0123456789" and 0.0 < float(confidence) <= 1.0
        correct += int(digit) == int(wav.name[0])
    assert correct / len(wavs) >= 0.5, proc.stdout  # chance is 0.1


def test_kws_app_features_are_the_ones_the_model_was_trained_on(ds_cnn, data_dir):
    """The app rebuilds the features from the manifest alone; they equal the training pipeline's."""
    import edgedl.runtime as rt
    from edgedl.data import fsdd

    spec = importlib.util.spec_from_file_location("kws_app", EXAMPLES / "kws_app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    manifest = rt.load(ds_cnn).manifest
    features = app.Features(manifest["preprocessing"])
    recs = [fsdd.Recording(p, int(p.name[0]), p.name.split("_")[1], int(p.stem.split("_")[2]))
            for p in official_test_recordings(data_dir, 5)]
    mean, std = fsdd.normalisation("logmel")
    want = (fsdd.raw_features(recs, "logmel") - mean) / std
    got = np.stack([features(app.read_wav(str(r.path), 8000)) for r in recs])
    assert got.shape == (5, 61, 40, 1)
    np.testing.assert_allclose(got[..., 0], want, atol=1e-4)


def test_kws_app_names_a_file_it_cannot_read_and_goes_on(ds_cnn, data_dir, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not a wav file")
    good = official_test_recordings(data_dir, 1)[0]
    proc = run(sys.executable, EXAMPLES / "kws_app.py", ds_cnn, bad, good)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(rf"^error: {re.escape(str(bad))}: ", proc.stderr, re.M), proc.stderr
    assert proc.stdout.startswith(f"{good}\t")


def test_kws_app_refuses_a_bundle_without_audio_features(lenet, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    bundle = tmp_path / "lenet.edgedl"
    compile_model(str(lenet), "x86_64", str(bundle), CompileOptions(backend="litert", num_samples=20))
    proc = run(sys.executable, EXAMPLES / "kws_app.py", bundle, tmp_path / "x.wav")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "computes 'logmel' or 'mfcc' audio features" in proc.stderr


# ----- examples/cpp_tvm: the TVM bundle from C++ -----

@pytest.fixture(scope="module")
def tvm_run(tmp_path_factory):
    """The C++ program, built with g++ by the example's Makefile against the TVM wheels installed here."""
    pytest.importorskip("tvm")
    if not (shutil.which("g++") and shutil.which("make")):
        pytest.skip("g++ and make are needed (apt-get install g++ make)")
    build = tmp_path_factory.mktemp("cpp_tvm")
    proc = run("make", "-C", EXAMPLES / "cpp_tvm", f"BUILD_DIR={build}", f"PYTHON={sys.executable}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return build / "tvm_run"


@pytest.fixture(scope="module", params=["int8", "float32"])
def tvm_bundle(request, lenet, tmp_path_factory):
    """LeNet compiled by TVM for this host: int8 with int8 input and output, or float32."""
    from edgedl.compile import CompileOptions, compile_model

    pytest.importorskip("tvm")
    quantize, io_type = ("int8", "int8") if request.param == "int8" else ("none", "float")
    out = tmp_path_factory.mktemp("tvm") / f"lenet_{request.param}.edgedl"
    compile_model(str(lenet), "x86_64", str(out),
                  CompileOptions(backend="tvm", quantize=quantize, io_type=io_type, num_samples=20))
    return out


def test_cpp_program_gives_the_python_runtimes_outputs(tvm_run, tvm_bundle, tmp_path):
    import edgedl.runtime as rt
    from edgedl.data import load_dataset
    from edgedl.runtime.quant import quantize

    model = rt.load(tvm_bundle)
    digits = load_dataset("digits")
    for i in (0, 1, 7):
        raw = quantize(digits.x_test[i:i + 1], model.inputs[0])  # the model's own dtype (int8 or float32)
        sample = tmp_path / f"input{i}.bin"
        raw.tofile(sample)
        proc = run(tvm_run, tvm_bundle, sample, tmp_path / f"output{i}.bin", timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        want = model.predict_raw(raw)
        header, *values = proc.stdout.strip().splitlines()
        assert header == f"output {want.dtype} {tuple(want.shape)}"
        got = np.array(values, dtype=np.float64).astype(want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want)  # printed exactly (%.9g round-trips float32)
        assert (tmp_path / f"output{i}.bin").read_bytes() == want.tobytes()


def test_cpp_program_names_an_input_of_the_wrong_size(tvm_run, tvm_bundle, tmp_path):
    sample = tmp_path / "short.bin"
    sample.write_bytes(b"\0" * 10)
    proc = run(tvm_run, tvm_bundle, sample, timeout=120)
    assert proc.returncode == 1
    assert re.fullmatch(rf"error: {re.escape(str(sample))}: holds 10 bytes; the model takes "
                        r"(int8|float32) \(1, 28, 28, 1\) = (784|3136) bytes\n", proc.stderr), proc.stderr


# ----- examples/tflm_cortex_m: a TFLite Micro firmware project -----

# The MicroMutableOpResolver methods TFLite Micro has (micro_mutable_op_resolver.h), and by hand,
# independently of prepare.py, the method each TFLite operator of the zoo's small models needs.
RESOLVER_METHODS = """Abs Add AddN ArgMax ArgMin AssignVariable AveragePool2D BatchMatMul BatchToSpaceNd BroadcastArgs
BroadcastTo CallOnce Cast Ceil CircularBuffer Concatenation Conv2D Cos CumSum DepthToSpace DepthwiseConv2D Dequantize
DetectionPostprocess Div Elu EmbeddingLookup Equal EthosU Exp ExpandDims Fill Floor FloorDiv FloorMod FullyConnected
Gather GatherNd Greater GreaterEqual HardSwish If L2Normalization L2Pool2D LeakyRelu Less LessEqual Log LogicalAnd
LogicalNot LogicalOr Logistic LogSoftmax Maximum MaxPool2D MirrorPad Mean Minimum Mul Neg NotEqual Pack Pad PadV2
Prelu Quantize ReadVariable ReduceMax Relu Relu6 Reshape ResizeBilinear ResizeNearestNeighbor Round Rsqrt SelectV2
Shape Sin Slice Softmax SpaceToBatchNd SpaceToDepth Split SplitV Squeeze Sqrt Square SquaredDifference StridedSlice
Sub Sum Svdf Tanh Transpose TransposeConv UnidirectionalSequenceLSTM Unpack VarHandle While ZerosLike""".split()
EXPECTED_METHOD = {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "MAX_POOL_2D": "AddMaxPool2D",
                   "AVERAGE_POOL_2D": "AddAveragePool2D", "FULLY_CONNECTED": "AddFullyConnected",
                   "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax", "QUANTIZE": "AddQuantize",
                   "DEQUANTIZE": "AddDequantize", "MEAN": "AddMean", "RELU": "AddRelu", "ADD": "AddAdd"}

# Declarations with the signatures of TFLite Micro's API, enough for g++ -fsyntax-only on main.cc.
# They are not TFLite Micro (its sources are not available offline); they check that main.cc and
# the generated model_settings.h are well-formed C++ calling that API and existing resolver methods.
TFLM_API_STUBS = {
    "tensorflow/lite/c/common.h": """#pragma once
#include <cstddef>
#include <cstdint>
typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef struct TfLiteQuantizationParams { float scale; int32_t zero_point; } TfLiteQuantizationParams;
typedef union TfLitePtrUnion { int8_t* int8; uint8_t* uint8; float* f; void* data; } TfLitePtrUnion;
typedef struct TfLiteTensor { TfLitePtrUnion data; TfLiteQuantizationParams params; size_t bytes; } TfLiteTensor;
""",
    "tensorflow/lite/micro/micro_mutable_op_resolver.h": """#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite {
class MicroOpResolver { public: virtual ~MicroOpResolver() = default; };
template <unsigned int tOpCount> class MicroMutableOpResolver : public MicroOpResolver {
 public:
%s
};
}  // namespace tflite
""" % "\n".join(f"  TfLiteStatus Add{m}();" for m in RESOLVER_METHODS),
    "tensorflow/lite/micro/micro_interpreter.h": """#pragma once
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
namespace tflite {
class MicroResourceVariables; class MicroProfilerInterface;
class MicroInterpreter {
 public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver, uint8_t* tensor_arena,
                   size_t tensor_arena_size, MicroResourceVariables* resource_variables = nullptr,
                   MicroProfilerInterface* profiler = nullptr, bool preserve_all_tensors = false);
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index);
  TfLiteTensor* output(size_t index);
  size_t arena_used_bytes() const;
};
}  // namespace tflite
""",
    "tensorflow/lite/schema/schema_generated.h": """#pragma once
#include <cstdint>
#define TFLITE_SCHEMA_VERSION (3)
namespace tflite {
struct Model { uint32_t version() const; };
inline const Model* GetModel(const void* buf) { return static_cast<const Model*>(buf); }
}  // namespace tflite
""",
    "tensorflow/lite/micro/micro_log.h": "#pragma once\nvoid MicroPrintf(const char* format, ...);\n",
    "tensorflow/lite/micro/system_setup.h": "#pragma once\nnamespace tflite { void InitializeTarget(); }\n",
    "tensorflow/lite/kernels/internal/tensor_ctypes.h": """#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite {
template <typename T> inline T* GetTensorData(TfLiteTensor* t) { return reinterpret_cast<T*>(t->data.data); }
template <typename T> inline const T* GetTensorData(const TfLiteTensor* t) {
  return reinterpret_cast<const T*>(t->data.data); }
}  // namespace tflite
""",
}


@pytest.fixture(scope="module")
def tflm_project(lenet, tmp_path_factory):
    """The project copied out, filled by prepare.py from a bundle `edgedl compile --backend tflm` made."""
    pytest.importorskip("tflite_micro")
    d = tmp_path_factory.mktemp("tflm")
    bundle = d / "lenet-m7.edgedl"
    proc = edgedl("compile", lenet, "--target", "cortex_m7", "--backend", "tflm", "--quantize", "int8",
                  "--io", "int8", "-o", bundle)
    assert proc.returncode == 0, proc.stderr[-2000:]
    project = d / "project"
    shutil.copytree(EXAMPLES / "tflm_cortex_m", project,
                    ignore=shutil.ignore_patterns("model_data.*", "model_settings.h", "*.o"))
    proc = run(sys.executable, project / "prepare.py", bundle, project)
    assert proc.returncode == 0, proc.stderr
    assert "wrote model_data.cc, model_data.h, model_settings.h" in proc.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {"bundle": bundle, "project": project, "manifest": manifest}


def test_tflm_c_array_compiles_with_the_host_compiler(tflm_project):
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    project = tflm_project["project"]
    proc = run("g++", "-std=c++17", "-Wall", "-Werror", "-c", "model_data.cc", "-o", "model_data_host.o", cwd=project)
    assert proc.returncode == 0, proc.stderr
    symbols = run("nm", "-S", "-C", "model_data_host.o", cwd=project).stdout
    size = int(re.search(r"^[0-9a-f]+ ([0-9a-f]+) R g_model_data$", symbols, re.M)[1], 16)
    model_bytes = next(f["bytes"] for f in tflm_project["manifest"]["files"] if f["path"] == "model.tflite")
    assert size == model_bytes


def test_tflm_project_registers_every_operator_of_the_model(tflm_project):
    proc = edgedl("inspect", tflm_project["bundle"], "--json")
    assert proc.returncode == 0, proc.stderr
    ops = set(json.loads(proc.stdout)["operators"])
    assert ops and ops <= set(EXPECTED_METHOD), f"add the resolver method of {ops - set(EXPECTED_METHOD)} here"
    settings = (tflm_project["project"] / "model_settings.h").read_text()
    registered = re.findall(r"resolver\.(Add\w+)\(\)", settings)
    assert {EXPECTED_METHOD[op] for op in ops} <= set(registered)
    assert len(registered) == len(set(registered))  # each once: a second Add of one op fails on the device
    assert f"constexpr int kNumOperators = {len(registered)};" in settings  # the resolver's capacity
    main = (tflm_project["project"] / "main.cc").read_text()
    assert "static OpResolver resolver;" in main and "RegisterOperators(resolver)" in main
    assert "using OpResolver = tflite::MicroMutableOpResolver<kNumOperators>;" in settings


def test_tflm_project_sizes_the_arena_from_the_manifest(tflm_project):
    arena = tflm_project["manifest"]["runtime"]["arena_size"]
    settings = (tflm_project["project"] / "model_settings.h").read_text()
    assert f"constexpr size_t kMeasuredArenaSize = {arena};" in settings
    total = int(re.search(r"constexpr size_t kTensorArenaSize = (\d+);", settings)[1])
    assert total >= arena and total % 16 == 0 and total <= 1.2 * arena
    header = (tflm_project["project"] / "model_data.h").read_text()
    assert f"constexpr unsigned int g_model_data_arena_size = {arena};" in header
    main = (tflm_project["project"] / "main.cc").read_text()
    assert "alignas(16) uint8_t tensor_arena[kTensorArenaSize];" in main
    assert "MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize)" in main
    assert "static_assert(kMeasuredArenaSize == EDGEDL_MODEL_ARENA_SIZE" in main


def test_tflm_main_is_well_formed_against_the_api(tflm_project, tmp_path):
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    for name, text in TFLM_API_STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    project = tflm_project["project"]
    proc = run("g++", "-std=c++17", "-Wall", "-Werror", "-fsyntax-only", f"-I{tmp_path}", "-I.", "main.cc",
               cwd=project)
    assert proc.returncode == 0, proc.stderr


def test_tflm_c_array_cross_compiles_for_cortex_m7(tflm_project):
    if not shutil.which("arm-none-eabi-g++"):
        pytest.skip("the Arm cross compiler is not installed (apt-get install gcc-arm-none-eabi)")
    project = tflm_project["project"]
    proc = run("make", "model_data.o", "size", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rodata = int(re.search(r"^\.rodata\s+(\d+)", proc.stdout, re.M)[1])
    model_bytes = next(f["bytes"] for f in tflm_project["manifest"]["files"] if f["path"] == "model.tflite")
    assert model_bytes <= rodata < model_bytes + 64  # the model in flash, 16-byte aligned, and its length
    header = run("arm-none-eabi-readelf", "-h", "-A", "model_data.o", cwd=project).stdout
    assert "Machine:                           ARM" in header and "Tag_CPU_name: \"7E-M\"" in header


def test_tflm_prepare_refuses_a_bundle_for_another_engine(lenet, tmp_path):
    from edgedl.compile import CompileOptions, compile_model

    bundle = tmp_path / "lenet.edgedl"
    compile_model(str(lenet), "x86_64", str(bundle), CompileOptions(backend="litert", num_samples=20))
    proc = run(sys.executable, EXAMPLES / "tflm_cortex_m" / "prepare.py", bundle, tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a TFLite Micro bundle (its engine is litert); compile with --backend tflm" in proc.stderr


def test_examples_readme_describes_each_example():
    text = (EXAMPLES / "README.md").read_text()
    for name in ("kws_app.py", "cpp_tvm", "tflm_cortex_m"):
        assert name in text
