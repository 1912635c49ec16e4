"""Score raw rows with an exported model: ``features.json`` encodes them
(:class:`~mtl_train.serving.rows.FeatureEncoder`), ONNX Runtime runs ``model.onnx``. Imports
numpy, pyarrow and onnxruntime; not torch, not mtl-train's model code.

    from mtl_train.serving.scorer import Scorer
    scorer = Scorer("export/")                       # features.json + model.onnx
    probs = scorer.score({"user": [7, None], "city": ["oslo", "rome"], ...})
    probs["prob_click"]                              # float32 [2]
"""
from __future__ import annotations

import os

import numpy as np

from mtl_train.errors import DataError
from mtl_train.serving.features import FILE, read_features
from mtl_train.serving.rows import FeatureEncoder

MODEL_FILE = "model.onnx"


def is_export_dir(path: str | None) -> bool:
    """Whether ``path`` is a folder holding an exported model (its features.json)."""
    return bool(path) and os.path.isfile(os.path.join(os.path.expanduser(str(path)), FILE))


class Scorer:
    """An exported model ready to score raw rows.

    Args:
        folder: the export folder (``features.json``, ``model.onnx`` and its weights file,
            the vocabulary files).
        threads: ONNX Runtime's intra-op threads (None: its default, one per core); inter-op
            runs sequentially.

    Attributes:
        features: the content of features.json. encoder: the raw-rows encoder.
        inputs: the model's input names; outputs: its output names, in order.

    Raises:
        DataError: a file is missing or unreadable (one line, naming it); onnxruntime is not
            installed (naming the ``export`` extra).
    """

    def __init__(self, folder: str, threads: int | None = None):
        folder = os.path.expanduser(folder)
        try:
            self.features = read_features(folder)
        except (OSError, ValueError) as e:
            raise DataError(f"{os.path.join(folder, FILE)}: {str(e).splitlines()[0]}") from None
        self.encoder = FeatureEncoder(self.features, folder)
        try:
            import onnxruntime as ort
        except ImportError:
            raise DataError("scoring an exported model needs onnxruntime: pip install 'mtl-train[export]'") from None
        path = os.path.join(folder, MODEL_FILE)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (an export folder holds model.onnx beside features.json)")
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a damaged file
            raise DataError(f"{path}: not a readable ONNX model ({str(e).strip().splitlines()[0]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def encode(self, rows, where: str = "raw rows") -> dict[str, np.ndarray]:
        """The model inputs of raw ``rows`` (see :meth:`FeatureEncoder.encode`)."""
        return self.encoder.encode(rows, where)

    def run(self, inputs: dict[str, np.ndarray], batch_size: int | None = None) -> dict[str, np.ndarray]:
        """{output name: float32 [B]} of encoded ``inputs`` (those the model takes are fed),
        ``batch_size`` rows per call of the model (None: all at once)."""
        n = len(inputs["sparse"])
        step = batch_size or max(n, 1)
        parts = [self.session.run(self.outputs, {k: inputs[k][s:s + step] for k in self.inputs})
                 for s in range(0, n, step)]
        if not parts:
            return {name: np.zeros(0, dtype=np.float32) for name in self.outputs}
        return {name: np.concatenate([p[j] for p in parts]) if len(parts) > 1 else parts[0][j]
                for j, name in enumerate(self.outputs)}

    def score(self, rows) -> dict[str, np.ndarray]:
        """{output name (``prob_<task>``, ...): float32 [B]} of raw ``rows`` (a pyarrow Table or
        a dict of column lists, named as in the training data).

        Raises:
            DataError: see :meth:`FeatureEncoder.encode`."""
        return self.run(self.encode(rows))
