// tvm_run: run an edgedl TVM bundle from C++ with TVM's runtime only (no Python).
//
//   tvm_run BUNDLE INPUT.bin [OUTPUT.bin]
//
// BUNDLE is the folder `edgedl compile ... --backend tvm` wrote: manifest.json and model.so (a Relax
// executable exported by TVM's export_library). INPUT.bin holds the raw input tensor, row-major, in
// the dtype and shape the manifest gives (for an int8 model: int8 values, already quantized with
// the manifest's scale and zero point). The output is printed one value per line after a header
// line "output <dtype> <shape>", and written raw to OUTPUT.bin when given.
//
// The steps are those of tvm.relax.VirtualMachine in Python: load the library, call its
// "vm_load_executable" to get the VM module, "vm_initialization" for the CPU with the pooled
// allocator, then call "main" with the input tensor.
//
// Note: edgedl.runtime.load() checks every file's sha256 against the manifest before loading native
// code; this example does not (check with `sha256sum BUNDLE/model.so` against manifest.json).

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.relax.VirtualMachine.POOLED_ALLOCATOR
constexpr size_t kAlignment = 64;    // what TVM's kernels expect of tensor data (kAllocAlignment)

// Host memory for the input tensor, aligned as TVM's own allocator would align it.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* tensor) {
    const size_t size = ffi::GetDataSize(*tensor);
    tensor->data = std::aligned_alloc(kAlignment, (size + kAlignment - 1) / kAlignment * kAlignment);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

struct TensorInfo {
  std::vector<int64_t> shape;
  std::string dtype;
};

// The first input's and output's shape and dtype, and the library's file name, from manifest.json.
struct Manifest {
  std::string library;
  TensorInfo input, output;
};

TensorInfo ReadTensorInfo(const json::Object& spec) {
  TensorInfo info;
  for (const ffi::Any& dim : spec.at("shape").cast<json::Array>()) info.shape.push_back(dim.cast<int64_t>());
  info.dtype = std::string(spec.at("dtype").cast<ffi::String>());
  return info;
}

Manifest ReadManifest(const std::string& bundle) {
  const std::string path = bundle + "/manifest.json";
  ffi::String error;
  json::Value root = json::Parse(ReadFile(path), &error);
  if (!error.empty()) throw std::runtime_error(path + ": not JSON (" + std::string(error) + ")");
  json::Object manifest = root.cast<json::Object>();
  json::Object runtime = manifest.at("runtime").cast<json::Object>();
  if (std::string(runtime.at("engine").cast<ffi::String>()) != "tvm") {
    throw std::runtime_error(path + ": not a TVM bundle (engine is " +
                             std::string(runtime.at("engine").cast<ffi::String>()) + ")");
  }
  Manifest m;
  m.library = bundle + "/" + std::string(runtime.at("library").cast<ffi::String>());
  m.input = ReadTensorInfo(manifest.at("inputs").cast<json::Array>()[0].cast<json::Object>());
  m.output = ReadTensorInfo(manifest.at("outputs").cast<json::Array>()[0].cast<json::Object>());
  return m;
}

size_t NumElements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::string ShapeText(const int64_t* dims, int ndim) {
  std::string text = "(";
  for (int i = 0; i < ndim; ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + (ndim == 1 ? ",)" : ")");
}

// One element of a CPU tensor as text: integers exactly, floats with enough digits to round-trip.
std::string ElementText(const DLTensor* t, size_t i) {
  char buf[64];
  const DLDataType d = t->dtype;
  const char* p = static_cast<const char*>(t->data) + t->byte_offset;
  if (d.code == kDLFloat && d.bits == 32) {
    std::snprintf(buf, sizeof buf, "%.9g", reinterpret_cast<const float*>(p)[i]);
  } else if (d.code == kDLFloat && d.bits == 64) {
    std::snprintf(buf, sizeof buf, "%.17g", reinterpret_cast<const double*>(p)[i]);
  } else if (d.code == kDLInt && d.bits == 8) {
    std::snprintf(buf, sizeof buf, "%d", reinterpret_cast<const int8_t*>(p)[i]);
  } else if (d.code == kDLUInt && d.bits == 8) {
    std::snprintf(buf, sizeof buf, "%u", reinterpret_cast<const uint8_t*>(p)[i]);
  } else if (d.code == kDLInt && d.bits == 16) {
    std::snprintf(buf, sizeof buf, "%d", reinterpret_cast<const int16_t*>(p)[i]);
  } else if (d.code == kDLInt && d.bits == 32) {
    std::snprintf(buf, sizeof buf, "%d", reinterpret_cast<const int32_t*>(p)[i]);
  } else {
    throw std::runtime_error("output dtype " + std::string(ffi::DLDataTypeToString(d)) + " is not printable here");
  }
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: " << argv[0] << " BUNDLE INPUT.bin [OUTPUT.bin]\n";
    return 2;
  }
  try {
    const Manifest m = ReadManifest(argv[1]);
    const DLDevice cpu{kDLCPU, 0};

    // The model: a shared library holding the Relax executable; the VM runs it on the CPU.
    ffi::Module library = ffi::Module::LoadFromFile(m.library);
    ffi::Optional<ffi::Function> load_executable = library->GetFunction("vm_load_executable");
    if (!load_executable) throw std::runtime_error(m.library + ": no vm_load_executable (not a Relax library)");
    ffi::Module vm = (*load_executable)().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Function run = vm->GetFunction("main").value();

    // The input, checked against the manifest's size.
    const DLDataType dtype = ffi::StringToDLDataType(m.input.dtype);
    const size_t nbytes = NumElements(m.input.shape) * ((dtype.bits * dtype.lanes + 7) / 8);
    const std::string data = ReadFile(argv[2]);
    if (data.size() != nbytes) {
      throw std::runtime_error(std::string(argv[2]) + ": holds " + std::to_string(data.size()) + " bytes; the model takes " +
                               m.input.dtype + " " + ShapeText(m.input.shape.data(), m.input.shape.size()) +
                               " = " + std::to_string(nbytes) + " bytes");
    }
    ffi::Shape shape(m.input.shape);
    ffi::Tensor input = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), shape, dtype, cpu);
    std::memcpy(input.data_ptr(), data.data(), data.size());

    ffi::Any result = run(input);
    // A model with one output returns a tensor; one with several returns a tuple (the first is printed).
    ffi::Tensor output;
    if (auto tensor = result.as<ffi::Tensor>()) {
      output = *tensor;
    } else {
      output = result.cast<ffi::Array<ffi::Any>>()[0].cast<ffi::Tensor>();
    }
    const DLTensor* out = output.GetDLTensorPtr();
    const size_t count = NumElements(std::vector<int64_t>(out->shape, out->shape + out->ndim));
    std::cout << "output " << ffi::DLDataTypeToString(out->dtype) << " " << ShapeText(out->shape, out->ndim) << "\n";
    for (size_t i = 0; i < count; ++i) std::cout << ElementText(out, i) << "\n";
    if (argc == 4) {
      std::ofstream file(argv[3], std::ios::binary);
      file.write(static_cast<const char*>(out->data) + out->byte_offset,
                 static_cast<std::streamsize>(ffi::GetDataSize(*out)));
      if (!file) throw std::runtime_error(std::string(argv[3]) + ": cannot write");
    }
  } catch (const ffi::Error& e) {
    std::cerr << "error: " << e.kind() << ": " << e.message() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
