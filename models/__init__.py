"""Offline model training for tradingd (TensorFlow/Keras and scikit-learn; the `train` extra).

The daemon and replay never import this package: they run the exported ONNX files through
onnxruntime (`tradingd.inference`). The shipped default model pair lives in `default/`.
"""
