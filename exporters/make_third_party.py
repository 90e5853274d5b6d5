"""Third-party ONNX files that no wheel ships, made locally with random seeded weights by the
exporter a user of that library would run (nothing is downloaded from a model hub).

Runs under a Python that has the library (``ultralytics``, ``yolox``, or ``tensorflow-cpu`` +
``tf2onnx``,
see the ``made locally`` entries of ``exporters/third_party.py``), not the project venv:

    python exporters/make_third_party.py NAME OUT.onnx
"""

from __future__ import annotations

import os
import sys


def yolov8n(out: str) -> None:
    """YOLOv8n from the yaml bundled in ``ultralytics`` (random weights), exported as
    ``YOLO.export(format="onnx", dynamic=True)`` does (fused Conv+BN, the Detect head in
    export mode, dynamic batch/H/W), but by ``torch.onnx.export`` itself: ``export`` may
    try to pip-install ``onnxslim`` at run time."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    net = YOLO("yolov8n.yaml").model.fuse().eval()
    for module in net.modules():
        if hasattr(module, "export"):
            module.export, module.format = True, "onnx"
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(net, torch.zeros(1, 3, 640, 640), out, opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": dims, "output0": {0: "batch", 2: "anchors"}})


def yolox_s(out: str) -> None:
    """YOLOX-s from the ``yolox`` package's own ``get_exp(None, "yolox-s")`` (random weights),
    exported as its ``tools/export_onnx.py --dynamic`` does by default (raw head outputs, no
    box decoding), at opset 17. ``torchvision`` is stubbed: yolox imports it only for NMS,
    and the PyPI torchvision wheel does not load next to the project's CPU torch."""
    import types

    import torch

    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    from yolox.exp import get_exp

    torch.manual_seed(0)
    net = get_exp(None, "yolox-s").get_model().eval()
    net.head.decode_in_inference = False
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(net, torch.zeros(1, 3, 640, 640), out, opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["output"],
                      dynamic_axes={"images": dims, "output": {0: "batch", 1: "anchors"}})


def _tf2onnx(model, spec, out: str) -> None:
    import tensorflow as tf
    import tf2onnx

    function = tf.function(lambda *args: model(args[0] if len(args) == 1 else args))
    tf2onnx.convert.from_function(function, input_signature=spec, opset=17, output_path=out)


def keras_lstm(out: str) -> None:
    """Two stacked Keras LSTMs (the second one returns its last state) and a Dense head;
    batch and time dynamic."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((None, 16), name="x")
    hidden = layers.LSTM(32, return_sequences=True)(inputs)
    hidden = layers.LSTM(24)(hidden)
    model = tf.keras.Model(inputs, layers.Dense(5)(hidden))
    _tf2onnx(model, (tf.TensorSpec((None, None, 16), tf.float32, name="x"),), out)


def keras_bert(out: str) -> None:
    """A tiny BERT-like encoder in Keras: token + position embeddings, two post-norm blocks of
    MultiHeadAttention and a (tanh) GELU feed-forward, LayerNormalization; int32 token ids,
    batch and sequence dynamic (up to 64 positions)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers

    class Positions(layers.Layer):  # Keras 3 takes no tf ops on symbolic inputs
        def build(self, shape):
            self.table = self.add_weight(shape=(64, shape[-1]), initializer="random_normal")

        def call(self, x):
            return x + self.table[None, :tf.shape(x)[1]]

    def gelu(x):  # tanh GELU: tf2onnx cannot convert the Erfc of Keras 3's exact one
        return tf.keras.activations.gelu(x, approximate=True)

    ids = tf.keras.Input((None,), dtype="int32", name="input_ids")
    hidden = Positions()(layers.Embedding(100, 32)(ids))
    hidden = layers.LayerNormalization()(hidden)
    for _ in range(2):
        attended = layers.MultiHeadAttention(num_heads=4, key_dim=8)(hidden, hidden)
        hidden = layers.LayerNormalization()(hidden + attended)
        feed = layers.Dense(32)(layers.Dense(64, activation=gelu)(hidden))
        hidden = layers.LayerNormalization()(hidden + feed)
    model = tf.keras.Model(ids, hidden)
    _tf2onnx(model, (tf.TensorSpec((None, None), tf.int32, name="input_ids"),), out)


MAKERS = {"yolov8n": yolov8n, "yolox_s": yolox_s, "keras_lstm": keras_lstm,
          "keras_bert": keras_bert}


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    MAKERS[sys.argv[1]](sys.argv[2])
