"""ONNX models: the protobuf index, reading, writing and external data."""
