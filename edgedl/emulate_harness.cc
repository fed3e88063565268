// edgedl's runner for a TVM Relax library built for another CPU (aarch64), run under qemu-user.
//
// Cross-compiled by edgedl.emulate against the target's libtvm_runtime and libtvm_ffi (from TVM's
// PyPI wheels for that CPU) and run in a work folder that holds:
//   model.so            the bundle's library (a Relax VM executable)
//   in0.bin, in1.bin..  each input's raw samples, one after another (the build's dtype and shape)
// Usage: edgedl_tvm_run model.so NUM_SAMPLES SPEC0 [SPEC1 ...], a SPEC per input: CODE:BITS:D0xD1x...
// (DLPack type code and bits; the shape of one sample, its batch included).
// It runs the VM's "main" on each sample in turn and writes, for output k, out<k>.bin (every
// sample's raw output, one after another) and outputs.txt ("CODE BITS D0xD1x..." per output, as
// the first sample returned them). Any failure: one line on stderr starting "error: ", exit 1.

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

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

// Host memory for the input tensors, aligned as TVM's kernels like it (64 bytes).
struct HostAlloc {
  void AllocData(DLTensor* tensor) {
    size_t size = (ffi::GetDataSize(*tensor) + 63) / 64 * 64;
    tensor->data = std::aligned_alloc(64, size ? size : 64);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

struct Spec {
  DLDataType dtype;
  std::vector<int64_t> shape;
  size_t nbytes;
};

static Spec ParseSpec(const std::string& text) {
  Spec spec;
  unsigned code = 0, bits = 0;
  char dims[512] = {0};
  if (std::sscanf(text.c_str(), "%u:%u:%511s", &code, &bits, dims) != 3) {
    throw std::runtime_error("bad input spec '" + text + "' (expected CODE:BITS:D0xD1x...)");
  }
  spec.dtype = DLDataType{static_cast<uint8_t>(code), static_cast<uint8_t>(bits), 1};
  std::stringstream ss(dims);
  std::string part;
  size_t count = 1;
  while (std::getline(ss, part, 'x')) {
    spec.shape.push_back(std::stoll(part));
    count *= static_cast<size_t>(spec.shape.back());
  }
  spec.nbytes = count * ((bits + 7) / 8);
  return spec;
}

static std::string Describe(const DLTensor* t) {
  std::string dims;
  for (int i = 0; i < t->ndim; ++i) dims += (i ? "x" : "") + std::to_string(t->shape[i]);
  return std::to_string(t->dtype.code) + " " + std::to_string(t->dtype.bits) + " " + dims;
}

static size_t NumBytes(const DLTensor* t) {
  size_t count = 1;
  for (int i = 0; i < t->ndim; ++i) count *= static_cast<size_t>(t->shape[i]);
  return count * ((t->dtype.bits * t->dtype.lanes + 7) / 8);
}

static int Run(int argc, char** argv) {
  if (argc < 4) throw std::runtime_error("usage: edgedl_tvm_run model.so NUM_SAMPLES SPEC...");
  const std::string library = argv[1];
  const long num_samples = std::atol(argv[2]);
  std::vector<Spec> specs;
  for (int i = 3; i < argc; ++i) specs.push_back(ParseSpec(argv[i]));

  DLDevice cpu{kDLCPU, 0};
  ffi::Module lib = ffi::Module::LoadFromFile(library);
  ffi::Optional<ffi::Function> load = lib->GetFunction("vm_load_executable");
  if (!load.has_value()) throw std::runtime_error("the library is not a Relax VM executable");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  // As tvm.relax.VirtualMachine(lib, tvm.cpu()) does: the CPU, device 0, the pooled allocator (2).
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Optional<ffi::Function> found = vm->GetFunction("main");
  if (!found.has_value()) throw std::runtime_error("the library has no 'main' function");
  ffi::Function main_fn = found.value();

  std::vector<std::ifstream> inputs;
  for (size_t i = 0; i < specs.size(); ++i) {
    inputs.emplace_back("in" + std::to_string(i) + ".bin", std::ios::binary);
    if (!inputs.back()) throw std::runtime_error("cannot open in" + std::to_string(i) + ".bin");
  }
  std::vector<std::ofstream> outputs;
  std::string described;
  std::vector<char> buffer;
  for (long n = 0; n < num_samples; ++n) {
    std::vector<ffi::Tensor> tensors;
    for (size_t i = 0; i < specs.size(); ++i) {
      buffer.resize(specs[i].nbytes);
      if (!inputs[i].read(buffer.data(), static_cast<std::streamsize>(buffer.size()))) {
        throw std::runtime_error("in" + std::to_string(i) + ".bin ends before sample " + std::to_string(n));
      }
      ffi::Tensor t = ffi::Tensor::FromNDAlloc(HostAlloc(), ffi::Shape(specs[i].shape), specs[i].dtype, cpu);
      std::memcpy(t.data_ptr(), buffer.data(), buffer.size());
      tensors.push_back(t);
    }
    std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<ffi::Tensor> outs;
    if (auto one = result.try_cast<ffi::Tensor>()) {
      outs.push_back(*one);
    } else if (auto many = result.try_cast<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& item : *many) outs.push_back(item.cast<ffi::Tensor>());
    } else {
      throw std::runtime_error("'main' returned neither a tensor nor a tuple of tensors");
    }
    if (n == 0) {
      for (size_t k = 0; k < outs.size(); ++k) {
        outputs.emplace_back("out" + std::to_string(k) + ".bin", std::ios::binary);
        described += Describe(outs[k].GetDLTensorPtr()) + "\n";
      }
    }
    for (size_t k = 0; k < outs.size() && k < outputs.size(); ++k) {
      const DLTensor* t = outs[k].GetDLTensorPtr();
      if (t->device.device_type != kDLCPU || !ffi::IsContiguous(*t)) {
        throw std::runtime_error("output " + std::to_string(k) + " is not a contiguous host tensor");
      }
      outputs[k].write(static_cast<const char*>(t->data) + t->byte_offset, static_cast<std::streamsize>(NumBytes(t)));
    }
  }
  for (auto& f : outputs) {
    f.close();
    if (!f) throw std::runtime_error("cannot write the outputs");
  }
  std::ofstream("outputs.txt") << described;
  return 0;
}

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& e) {
    std::string message = e.message();
    std::cerr << "error: " << e.kind() << ": " << message.substr(0, message.find('\n')) << std::endl;
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << std::endl;
  }
  return 1;
}
