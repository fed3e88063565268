// A TFLite Micro firmware skeleton for a Cortex-M: runs the model edgedl compiled into model_data.cc.
//
// model_data.cc / model_data.h  the model as a 16-byte aligned C array (from the bundle)
// model_settings.h              the operators to register, the arena size, input/output quantization
//                               (written by prepare.py from the bundle's manifest.json)
//
// Replace FillInput() with your sensor data and HandleOutput() with what the device should do.
// Build: see the Makefile and README.md.

#include <cstddef>
#include <cstdint>

#include "model_data.h"
#include "model_settings.h"
#include "tensorflow/lite/kernels/internal/tensor_ctypes.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"

static_assert(kMeasuredArenaSize == EDGEDL_MODEL_ARENA_SIZE,
              "model_settings.h and model_data.h come from different bundles: run prepare.py again");
static_assert(kTensorArenaSize >= kMeasuredArenaSize, "the arena is smaller than the measured minimum");

namespace {

// The tensor arena: all of the model's activations live here; nothing is allocated on the heap.
alignas(16) uint8_t tensor_arena[kTensorArenaSize];

// Placeholder input: every element at the input's zero point (real value 0). Put sensor data here,
// quantized as q = round(real / kInputScale) + kInputZeroPoint.
void FillInput(TfLiteTensor* input) {
  InputType* data = tflite::GetTensorData<InputType>(input);
  for (size_t i = 0; i < kInputSize; ++i) data[i] = static_cast<InputType>(kInputZeroPoint);
}

// Report the top class and its score (dequantized).
void HandleOutput(const TfLiteTensor* output) {
  const OutputType* data = tflite::GetTensorData<OutputType>(output);
  size_t best = 0;
  for (size_t i = 1; i < kOutputSize; ++i) {
    if (data[i] > data[best]) best = i;
  }
  const float score = kOutputScale * (static_cast<int>(data[best]) - kOutputZeroPoint);
  MicroPrintf("class %d score %d/1000", static_cast<int>(best), static_cast<int>(score * 1000.0f));
}

}  // namespace

int main() {
  tflite::InitializeTarget();

  const tflite::Model* model = tflite::GetModel(EDGEDL_MODEL_DATA);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("model schema %d, this TFLite Micro reads %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return 1;
  }

  static OpResolver resolver;
  if (RegisterOperators(resolver) != kTfLiteOk) {
    MicroPrintf("registering the model's %d operators failed", kNumOperators);
    return 1;
  }

  static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors failed in a %d-byte arena", static_cast<int>(kTensorArenaSize));
    return 1;
  }
  MicroPrintf("arena: %d of %d bytes used", static_cast<int>(interpreter.arena_used_bytes()),
              static_cast<int>(kTensorArenaSize));

  TfLiteTensor* input = interpreter.input(0);
  const TfLiteTensor* output = interpreter.output(0);
  while (true) {
    FillInput(input);
    if (interpreter.Invoke() != kTfLiteOk) {
      MicroPrintf("Invoke failed");
      return 1;
    }
    HandleOutput(output);
  }
}
