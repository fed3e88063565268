"""LiteRT on a .tflite's bytes with one of its kernel sets, run sample by sample: the reference the
TVM int8 tests compare against."""

from __future__ import annotations

import numpy as np


def litert(buf, config, keep_tensors=False):
    from ai_edge_litert import interpreter as litert_interpreter

    resolver = {"default": litert_interpreter.OpResolverType.AUTO,
                "builtin": litert_interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": litert_interpreter.OpResolverType.BUILTIN_REF}[config]
    interpreter = litert_interpreter.Interpreter(model_content=buf, num_threads=1,
                                                 experimental_op_resolver_type=resolver,
                                                 experimental_preserve_all_tensors=keep_tensors)
    interpreter.allocate_tensors()
    return interpreter


def run_litert(interpreter, xs):
    index_in = interpreter.get_input_details()[0]["index"]
    index_out = interpreter.get_output_details()[0]["index"]
    outputs = []
    for x in xs:
        interpreter.set_tensor(index_in, x[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(index_out)[0].copy())
    return np.stack(outputs)
