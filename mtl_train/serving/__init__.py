"""Serving an exported model without mtl-train's model code or torch: ``features.json``
(:mod:`mtl_train.serving.features`), the raw-rows encoder (:mod:`mtl_train.serving.rows`)
and the ONNX Runtime scorer (:mod:`mtl_train.serving.scorer`). Imports numpy, pyarrow and
onnxruntime only."""
