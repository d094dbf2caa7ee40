"""The ONNX backend: :mod:`.reader` opens and reads, :mod:`.writer` writes, :mod:`.external`
validates external data, :mod:`.checks` runs onnx.checker and shape checks."""
