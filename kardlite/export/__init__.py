"""Export a trained KARD system for the CPU runtime: student → GGUF, encoders → ONNX int8, one bundle folder."""
