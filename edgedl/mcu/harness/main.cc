// edgedl MCU harness: runs a TFLite Micro model on inputs received over the board's UART and sends
// back the outputs, the instruction (SysTick) count of Invoke, per-operator counts and the arena used.
// The protocol is documented in docs/mcu-protocol.md of edgedl; edgedl/mcu/protocol.py is its host side.
//
// Frames, both directions: "EDGE" (4 bytes), a type byte, a little-endian uint32 payload length,
// the payload. Host -> board: 'H' hello, 'I' inputs, 'Q' quit, 'T' self-test. Board -> host:
// 'H' hello, 'R' result, 'E' error, 'L' log, 'B' bye, 'F' fault.
//
// This file is copied unchanged into every project; edgedl_config.h (generated) holds what differs.

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <new>

#include "edgedl_config.h"
#include EDGEDL_DEVICE_HEADER
#include "model_data.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

constexpr uint8_t kProtocolVersion = 1;

// ------------------------------------------------------------------ CMSDK APB UART (MPS2/MPS3)

struct CmsdkUart {
  volatile uint32_t data;
  volatile uint32_t state;  // bit 0: TX buffer full, bit 1: RX buffer full
  volatile uint32_t ctrl;   // bit 0: TX enable, bit 1: RX enable
  volatile uint32_t intstatus;
  volatile uint32_t bauddiv;
};

CmsdkUart* const uart = reinterpret_cast<CmsdkUart*>(EDGEDL_UART_BASE);

void UartInit() {
  uart->bauddiv = EDGEDL_UART_BAUDDIV;
  uart->ctrl = 0x3;
}

void PutByte(uint8_t c) {
  while (uart->state & 0x1) {
  }
  uart->data = c;
}

uint8_t GetByte() {
  while (!(uart->state & 0x2)) {
  }
  return static_cast<uint8_t>(uart->data);
}

void PutBytes(const void* data, uint32_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (uint32_t i = 0; i < n; ++i) PutByte(p[i]);
}

void GetBytes(void* data, uint32_t n) {
  uint8_t* p = static_cast<uint8_t*>(data);
  for (uint32_t i = 0; i < n; ++i) p[i] = GetByte();
}

void PutU8(uint8_t v) { PutByte(v); }
void PutU16(uint16_t v) { PutBytes(&v, 2); }  // Cortex-M is little-endian, as the protocol
void PutU32(uint32_t v) { PutBytes(&v, 4); }
void PutU64(uint64_t v) { PutBytes(&v, 8); }
void PutF32(float v) { PutBytes(&v, 4); }

uint32_t GetU32() {
  uint32_t v;
  GetBytes(&v, 4);
  return v;
}

void BeginFrame(char type, uint32_t length) {
  PutBytes("EDGE", 4);
  PutU8(static_cast<uint8_t>(type));
  PutU32(length);
}

void TextFrame(char type, const char* text) {
  uint32_t n = static_cast<uint32_t>(strlen(text));
  BeginFrame(type, n + 1);
  PutBytes(text, n);
  PutByte('\n');
}

// ------------------------------------------------------------------ halting

[[noreturn]] void Halt(int code) {
#if EDGEDL_SEMIHOSTING
  // Semihosting SYS_EXIT (0x18): ADP_Stopped_ApplicationExit ends the emulator with status 0,
  // any other reason with status 1. Only built for the emulator: on a board without a debugger
  // BKPT would fault.
  register uint32_t r0 __asm__("r0") = 0x18;
  register uint32_t r1 __asm__("r1") = code == 0 ? 0x20026u : 0x20023u;
  __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
#else
  (void)code;
#endif
  for (;;) {
  }
}

// ------------------------------------------------------------------ instruction counter

// SysTick counts down from its 24-bit reload value; each wrap raises an interrupt that adds 2^24.
// Under QEMU with -icount shift=0 it advances once per executed instruction (see the protocol doc).
volatile uint32_t g_wraps = 0;

void CounterStart() {
  SysTick->LOAD = 0xFFFFFFu;
  SysTick->VAL = 0;
  SysTick->CTRL = SysTick_CTRL_CLKSOURCE_Msk | SysTick_CTRL_TICKINT_Msk | SysTick_CTRL_ENABLE_Msk;
}

// Restart the counter from zero. QEMU's SysTick is a ptimer whose ticks are counted from the moment
// it was last loaded: restarting it right before a measurement makes the count independent of how
// long the harness waited for the host's bytes (a tick is several instructions in the emulator).
void CounterRestart() {
  SysTick->CTRL = 0;
  g_wraps = 0;
  SysTick->LOAD = 0xFFFFFFu;
  SysTick->VAL = 0;
  SysTick->CTRL = SysTick_CTRL_CLKSOURCE_Msk | SysTick_CTRL_TICKINT_Msk | SysTick_CTRL_ENABLE_Msk;
  // The first tick reloads the cleared counter from LOAD; from then on Now() counts from 0.
  while (SysTick->VAL == 0) {
  }
}

uint64_t Now() {
  uint32_t wraps, value;
  do {
    wraps = g_wraps;
    value = SysTick->VAL;
  } while (wraps != g_wraps);
  return (static_cast<uint64_t>(wraps) << 24) + (0xFFFFFFu - value);
}

// ------------------------------------------------------------------ per-operator profiler

class Profiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override {
    if (count_ >= EDGEDL_MAX_EVENTS) return EDGEDL_MAX_EVENTS;
    tags_[count_] = tag;
    start_[count_] = Now();
    ticks_[count_] = 0;
    return count_++;
  }
  void EndEvent(uint32_t handle) override {
    if (handle < EDGEDL_MAX_EVENTS) ticks_[handle] = Now() - start_[handle];
  }
  void Reset() { count_ = 0; }
  uint32_t count() const { return count_; }
  const char* tag(uint32_t i) const { return tags_[i] ? tags_[i] : "?"; }
  uint64_t ticks(uint32_t i) const { return ticks_[i]; }

 private:
  const char* tags_[EDGEDL_MAX_EVENTS] = {};
  uint64_t start_[EDGEDL_MAX_EVENTS] = {};
  uint64_t ticks_[EDGEDL_MAX_EVENTS] = {};
  uint32_t count_ = 0;
};

alignas(16) uint8_t g_arena[EDGEDL_ARENA_BYTES];
Profiler g_profiler;
tflite::MicroMutableOpResolver<EDGEDL_NUM_OPERATORS> g_resolver;
tflite::MicroInterpreter* g_interpreter = nullptr;
alignas(tflite::MicroInterpreter) uint8_t g_interpreter_storage[sizeof(tflite::MicroInterpreter)];
uint32_t g_arena_used = 0;

void LogToHost(const char* s) {
  // TFLite Micro's MicroPrintf lands here: forwarded as log frames.
  TextFrame('L', s);
}

// ------------------------------------------------------------------ messages

uint32_t TensorSpecBytes(const TfLiteTensor* t) { return 1 + 4 + 1 + 4 * t->dims->size + 4 + 4; }

void PutTensorSpec(const TfLiteTensor* t) {
  PutU8(static_cast<uint8_t>(t->type));
  PutU32(static_cast<uint32_t>(t->bytes));
  PutU8(static_cast<uint8_t>(t->dims->size));
  for (int d = 0; d < t->dims->size; ++d) PutU32(static_cast<uint32_t>(t->dims->data[d]));
  PutF32(t->params.scale);
  PutU32(static_cast<uint32_t>(t->params.zero_point));
}

void SendHello() {
  tflite::MicroInterpreter& in = *g_interpreter;
  uint32_t n = 1 + 4 + 4 + 4 + 1 + 1;
  for (size_t i = 0; i < in.inputs_size(); ++i) n += TensorSpecBytes(in.input(i));
  for (size_t i = 0; i < in.outputs_size(); ++i) n += TensorSpecBytes(in.output(i));
  BeginFrame('H', n);
  PutU8(kProtocolVersion);
  PutU32(EDGEDL_ARENA_BYTES);
  PutU32(g_arena_used);
  PutU32(SCB->CPUID);
  PutU8(static_cast<uint8_t>(in.inputs_size()));
  PutU8(static_cast<uint8_t>(in.outputs_size()));
  for (size_t i = 0; i < in.inputs_size(); ++i) PutTensorSpec(in.input(i));
  for (size_t i = 0; i < in.outputs_size(); ++i) PutTensorSpec(in.output(i));
}

void Discard(uint32_t n) {
  while (n--) GetByte();
}

void RunInference(uint32_t length) {
  tflite::MicroInterpreter& in = *g_interpreter;
  uint32_t expected = 0;
  for (size_t i = 0; i < in.inputs_size(); ++i) expected += in.input(i)->bytes;
  if (length != expected) {
    Discard(length);
    char text[96];
    snprintf(text, sizeof(text), "inputs of %lu bytes received, the model takes %lu",
             static_cast<unsigned long>(length), static_cast<unsigned long>(expected));
    TextFrame('E', text);
    return;
  }
  // Every inference starts from zero state, as a Keras layer's call does: a fused LSTM keeps its
  // output and cell state in variable tensors from one Invoke to the next. (Outside the count.)
  TfLiteStatus reset = in.Reset();
  for (size_t i = 0; i < in.inputs_size(); ++i) {
    GetBytes(in.input(i)->data.raw, in.input(i)->bytes);
  }
  if (reset != kTfLiteOk) {
    TextFrame('E', "Reset failed");
    return;
  }
  g_profiler.Reset();
  CounterRestart();
  uint64_t start = Now();
  TfLiteStatus status = in.Invoke();
  uint64_t instructions = Now() - start;
  if (status != kTfLiteOk) {
    TextFrame('E', "Invoke failed");
    return;
  }
  uint32_t events = g_profiler.count();
  uint32_t n = 4 + 8 + 2;
  for (uint32_t e = 0; e < events; ++e) n += 1 + static_cast<uint32_t>(strlen(g_profiler.tag(e))) + 8;
  for (size_t i = 0; i < in.outputs_size(); ++i) n += in.output(i)->bytes;
  BeginFrame('R', n);
  PutU32(0);
  PutU64(instructions);
  PutU16(static_cast<uint16_t>(events));
  for (uint32_t e = 0; e < events; ++e) {
    const char* tag = g_profiler.tag(e);
    uint8_t len = static_cast<uint8_t>(strlen(tag));
    PutU8(len);
    PutBytes(tag, len);
    PutU64(g_profiler.ticks(e));
  }
  for (size_t i = 0; i < in.outputs_size(); ++i) PutBytes(in.output(i)->data.raw, in.output(i)->bytes);
}

void SelfTest(uint32_t length) {
  uint8_t what = 0;
  if (length > 0) what = GetByte();
  if (length > 1) Discard(length - 1);
  if (what == 'F') {
    // A read from an address nothing answers: a bus fault, escalated to HardFault.
    volatile uint32_t* bad = reinterpret_cast<volatile uint32_t*>(EDGEDL_FAULT_ADDRESS);
    (void)*bad;
  }
  if (what == 'L') {
    for (;;) {
    }
  }
  if (what == 'C') {
    // Calibration: a loop of exactly 2 instructions per iteration (SUBS, BNE) run 2^20 times,
    // so the host can relate counter ticks to executed instructions.
    uint32_t n = 1u << 20;
    CounterRestart();
    uint64_t start = Now();
    __asm__ volatile(
        "1:\n"
        "subs %0, %0, #1\n"
        "bne 1b\n"
        : "+r"(n)
        :
        : "cc");
    uint64_t ticks = Now() - start;
    BeginFrame('C', 12);
    PutU32(2u << 20);
    PutU64(ticks);
    return;
  }
  TextFrame('E', "unknown self-test");
}

}  // namespace

// ------------------------------------------------------------------ exception handlers

extern "C" void SysTick_Handler(void) { g_wraps = g_wraps + 1; }

extern "C" void edgedl_fault(uint32_t* frame, uint32_t exc_return) {
  char text[200];
  snprintf(text, sizeof(text),
           "FAULT HardFault pc=0x%08lx lr=0x%08lx cfsr=0x%08lx hfsr=0x%08lx bfar=0x%08lx exc_return=0x%08lx",
           static_cast<unsigned long>(frame[6]), static_cast<unsigned long>(frame[5]),
           static_cast<unsigned long>(SCB->CFSR), static_cast<unsigned long>(SCB->HFSR),
           static_cast<unsigned long>(SCB->BFAR), static_cast<unsigned long>(exc_return));
  TextFrame('F', text);
  Halt(2);
}

// abort() (TFLite Micro's TFLITE_ABORT, a failed assertion) and exit() end here instead of in
// newlib's endless loop, so the host hears about it.
extern "C" void _exit(int code) {
  char text[120];
  snprintf(text, sizeof(text), "FAULT exit(%d) pc=0x%08lx: the firmware aborted (an assertion in TFLite Micro?)", code,
           reinterpret_cast<unsigned long>(__builtin_return_address(0)));
  TextFrame('F', text);
  Halt(3);
}

extern "C" __attribute__((naked)) void HardFault_Handler(void) {
  __asm__ volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "mov r1, lr\n"
      "b edgedl_fault\n");
}

// ------------------------------------------------------------------ main

int main(void) {
  UartInit();
  RegisterDebugLogCallback(LogToHost);
  CounterStart();

  const tflite::Model* model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    TextFrame('E', "model schema version mismatch");
    Halt(1);
  }
  if (edgedl_register_ops(g_resolver) != kTfLiteOk) {
    TextFrame('E', "registering the operators failed");
    Halt(1);
  }
  g_interpreter = new (g_interpreter_storage)
      tflite::MicroInterpreter(model, g_resolver, g_arena, EDGEDL_ARENA_BYTES, nullptr, &g_profiler);
  if (g_interpreter->AllocateTensors() != kTfLiteOk) {
    TextFrame('E', "AllocateTensors failed: the arena is too small or an operator is missing");
    Halt(1);
  }
  g_arena_used = static_cast<uint32_t>(g_interpreter->arena_used_bytes());
  SendHello();

  for (;;) {
    // Resynchronise on the magic: bytes before it are skipped.
    const char magic[4] = {'E', 'D', 'G', 'E'};
    int matched = 0;
    while (matched < 4) {
      uint8_t c = GetByte();
      matched = (c == static_cast<uint8_t>(magic[matched])) ? matched + 1 : (c == 'E' ? 1 : 0);
    }
    char type = static_cast<char>(GetByte());
    uint32_t length = GetU32();
    switch (type) {
      case 'H':
        Discard(length);
        SendHello();
        break;
      case 'I':
        RunInference(length);
        break;
      case 'T':
        SelfTest(length);
        break;
      case 'Q':
        Discard(length);
        BeginFrame('B', 0);
        Halt(0);
      default:
        Discard(length);
        TextFrame('E', "unknown command");
    }
  }
}
