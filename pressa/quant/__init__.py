"""Weight quantization math on numpy arrays; knows nothing of ONNX."""
