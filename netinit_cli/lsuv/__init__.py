"""Layer-sequential unit-variance initialization (``--method lsuv``) of ONNX models, through
onnxruntime (the ``netinit[lsuv]`` extra, imported only when LSUV runs).

``options.py`` the sub-options (no onnx) · ``layers.py`` the weight layers of a graph, in order,
and why one is skipped · ``data.py`` the batch (``--data`` or a seeded draw), checked against the
graph inputs · ``engine.py`` measuring and rescaling in one onnxruntime session · ``stage.py`` the
pipeline stage between plan and write (:func:`netinit_cli.api.initialize` calls it).

This ``__init__`` imports nothing: the method registry reads ``options`` without loading onnx.
"""
