"""The embeddable runtime: numpy plus one engine (LiteRT, TVM's runtime, TFLite Micro, ONNX Runtime).

Nothing here imports TensorFlow, Keras or click, so a device needs only this package and one engine.
"""
