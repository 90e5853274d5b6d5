"""A zoo of real architectures with small configs and random weights, exported to ONNX.

torchvision classification and segmentation models, timm models and Hugging Face
transformers models (built from small configs: nothing is downloaded), each exported through
both torch exporters (``torch.onnx.export(..., dynamo=True)`` and ``dynamo=False``) with the
exporters' default options, next to a seeded ``.npz`` of inputs keyed by ONNX input name.

Weights are random (seeded) and every normalization layer gets random statistics and affine
parameters first: at their defaults (mean 0, var 1, scale 1, bias 0) they are the identity and
cannot catch a layout, folding or epsilon bug.

Needs torch, torchvision, timm and transformers (``bash scripts/zoo.sh`` makes that venv)::

    python exporters/zoo.py OUT_DIR [--exporter dynamo|torchscript] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class ZooModel:
    """``build()`` returns ``(torch_module, inputs)``; ``inputs`` maps the forward
    argument names (the ONNX input names) to NumPy arrays, in argument order."""

    name: str
    family: str
    build: Callable[[], tuple]


def _image(batch: int = 2, size: int = 64, channels: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {"x": rng.standard_normal((batch, channels, size, size)).astype(np.float32)}


def _tokens(vocab: int, batch: int = 2, length: int = 8, mask: bool = True) -> dict:
    """Token ids, and an attention mask whose second row has two padding positions."""
    rng = np.random.default_rng(SEED)
    inputs = {"input_ids": rng.integers(0, vocab, (batch, length)).astype(np.int64)}
    if mask:
        attention = np.ones((batch, length), np.int64)
        attention[1:, -2:] = 0
        inputs["attention_mask"] = attention
    return inputs


def randomize_norms(module) -> None:
    """Give every normalization layer random running statistics and affine parameters."""
    import torch

    gen = torch.Generator().manual_seed(SEED + 1)

    def uniform(t, low, high):
        with torch.no_grad():
            t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low)

    for m in module.modules():
        if getattr(m, "running_mean", None) is not None:
            uniform(m.running_mean, -0.5, 0.5)
            uniform(m.running_var, 0.5, 2.0)
        if "Norm" in type(m).__name__:
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(weight, torch.Tensor):
                uniform(weight, 0.5, 1.5)
            if isinstance(bias, torch.Tensor):
                uniform(bias, -0.5, 0.5)


def _select(module, keys: tuple[str, ...], names: tuple[str, ...] | None = None):
    """``module`` returning a dict or a ModelOutput, wrapped to return the tensors named
    ``keys`` (one tensor, or a tuple); its arguments are passed as keywords ``names``
    (positionally when ``None``)."""
    import torch

    class Select(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, *args):
            out = self.model(*args) if names is None else self.model(**dict(zip(names, args)))
            values = tuple(out[k] for k in keys)
            return values[0] if len(values) == 1 else values

    return Select()


# --- torchvision -------------------------------------------------------------------------

def _tv(factory: str, size: int = 64, **kwargs):
    def build():
        import torchvision.models as tvm

        return getattr(tvm, factory)(weights=None, num_classes=10, **kwargs), _image(size=size)
    return build


def _tv_vit():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=10)
    return model, _image(size=32)


def _tv_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    blocks = [CNBlockConfig(16, 32, 2), CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 1)]
    return ConvNeXt(blocks, num_classes=10), _image(size=32)


def _tv_swin():
    from torchvision.models import SwinTransformer

    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                            window_size=[4, 4], num_classes=10)
    return model, _image(size=32)


def _tv_densenet():
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16,
                    num_classes=10), _image(size=32)


def _tv_segmentation(factory: str, **kwargs):
    def build():
        import torchvision.models.segmentation as seg

        model = getattr(seg, factory)(weights=None, weights_backbone=None, num_classes=4,
                                      **kwargs)
        return _select(model, ("out",)), _image(batch=1, size=64)
    return build


# --- timm --------------------------------------------------------------------------------

def _timm(name: str, size: int = 64, **kwargs):
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), \
            _image(size=size)
    return build


# --- transformers ------------------------------------------------------------------------

def _hf_text(model_cls: str, config_cls: str, keys=("last_hidden_state",), mask=True,
             **config):
    def build():
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg)
        inputs = _tokens(config["vocab_size"], mask=mask)
        return _select(model, keys, tuple(inputs)), inputs
    return build


def _hf_vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    inputs = {"pixel_values": _image(size=32)["x"]}
    return _select(ViTModel(cfg), ("last_hidden_state", "pooler_output"), tuple(inputs)), inputs


def _hf_whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16)
    rng = np.random.default_rng(SEED)
    # The encoder's two convolutions halve the frames: 2 * max_source_positions in.
    inputs = {"input_features": rng.standard_normal((2, 16, 32)).astype(np.float32)}
    return _select(WhisperEncoder(cfg), ("last_hidden_state",), tuple(inputs)), inputs


def _hf_wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
                         feat_extract_norm="layer")
    rng = np.random.default_rng(SEED)
    inputs = {"input_values": rng.standard_normal((2, 400)).astype(np.float32)}
    return _select(Wav2Vec2Model(cfg), ("last_hidden_state",), tuple(inputs)), inputs


_TEXT = dict(vocab_size=100)
_BERTLIKE = dict(_TEXT, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=32)

MODELS: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("tv_resnet18", "torchvision", _tv("resnet18")),
    ZooModel("tv_mobilenet_v3_small", "torchvision", _tv("mobilenet_v3_small")),
    ZooModel("tv_efficientnet_b0", "torchvision", _tv("efficientnet_b0")),
    ZooModel("tv_regnet_y_400mf", "torchvision", _tv("regnet_y_400mf")),
    ZooModel("tv_squeezenet1_1", "torchvision", _tv("squeezenet1_1")),
    ZooModel("tv_shufflenet_v2_x0_5", "torchvision", _tv("shufflenet_v2_x0_5")),
    ZooModel("tv_densenet_small", "torchvision", _tv_densenet),
    ZooModel("tv_vit_small", "torchvision", _tv_vit),
    ZooModel("tv_convnext_small", "torchvision", _tv_convnext),
    ZooModel("tv_swin_small", "torchvision", _tv_swin),
    ZooModel("tv_deeplabv3_mobilenet_v3_large", "torchvision",
             _tv_segmentation("deeplabv3_mobilenet_v3_large", aux_loss=False)),
    ZooModel("tv_lraspp_mobilenet_v3_large", "torchvision",
             _tv_segmentation("lraspp_mobilenet_v3_large")),
    ZooModel("tv_fcn_resnet50", "torchvision", _tv_segmentation("fcn_resnet50", aux_loss=False)),
    ZooModel("timm_resnet10t", "timm", _timm("resnet10t")),
    ZooModel("timm_vit_tiny", "timm", _timm("vit_tiny_patch16_224", size=32, img_size=32,
                                            patch_size=8, depth=2)),
    ZooModel("timm_convnext_atto", "timm", _timm("convnext_atto")),
    ZooModel("timm_efficientnet_b0", "timm", _timm("efficientnet_b0")),
    ZooModel("hf_bert", "transformers", _hf_text("BertModel", "BertConfig",
                                                 ("last_hidden_state", "pooler_output"),
                                                 **_BERTLIKE)),
    ZooModel("hf_distilbert", "transformers", _hf_text(
        "DistilBertModel", "DistilBertConfig", dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=32, **_TEXT)),
    ZooModel("hf_gpt2", "transformers", _hf_text("GPT2Model", "GPT2Config", n_embd=32,
                                                 n_layer=2, n_head=2, n_positions=32, **_TEXT)),
    ZooModel("hf_t5_encoder", "transformers", _hf_text(
        "T5EncoderModel", "T5Config", d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        **_TEXT)),
    ZooModel("hf_vit", "transformers", _hf_vit),
    ZooModel("hf_whisper_encoder", "transformers", _hf_whisper_encoder),
    ZooModel("hf_wav2vec2", "transformers", _hf_wav2vec2),
]}


def build(name: str):
    """``(torch_module in eval mode, inputs)`` for zoo model ``name``: seeded weights,
    randomized normalization layers; torchvision's and timm's linear layers get torch's
    default initialization (some heads start at zero or tiny, giving outputs of ~0)."""
    import torch

    torch.manual_seed(SEED)
    module, inputs = MODELS[name].build()
    if MODELS[name].family in ("torchvision", "timm"):
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
    randomize_norms(module)
    return module.eval(), inputs


def paths(out_dir: str | os.PathLike, name: str, exporter: str) -> tuple[Path, Path]:
    """Where ``export`` writes model ``name``: the ONNX file and its inputs."""
    out = Path(out_dir)
    return out / f"{name}.{exporter}.onnx", out / f"{name}.npz"


def export(name: str, out_dir: str | os.PathLike, exporter: str = "dynamo") -> tuple[Path, Path]:
    """Export zoo model ``name`` with ``exporter`` ("dynamo" or "torchscript") into
    ``out_dir``; returns the paths of the ONNX file and of the inputs ``.npz``."""
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    onnx_path, npz_path = paths(out_dir, name, exporter)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    module, inputs = build(name)
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    options = dict(dynamo=True, external_data=False) if exporter == "dynamo" else dict(dynamo=False)
    partial = onnx_path.with_suffix(".partial")
    # nn.MultiheadAttention's inference fast path is a fused op the TorchScript exporter lacks.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(partial), input_names=list(inputs), **options)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    np.savez(npz_path, **inputs)
    partial.replace(onnx_path)
    return onnx_path, npz_path


def export_all(out_dir: str | os.PathLike, exporter: str = "dynamo",
               names: list[str] | None = None, *, verbose: bool = False
               ) -> dict[str, tuple[Path, Path] | Exception]:
    """Export every zoo model (or ``names``) with ``exporter`` into ``out_dir``.

    Returns name -> ``(onnx_path, npz_path)``, or the exception when the torch exporter
    failed on that model (the other models are still exported).
    """
    results: dict[str, tuple[Path, Path] | Exception] = {}
    for name in names or MODELS:
        try:
            results[name] = export(name, out_dir, exporter)
        except Exception as exc:  # an exporter failure is reported, not fatal to the rest
            results[name] = exc
        if verbose:
            result = results[name]
            print(f"{name} [{exporter}]: " + (str(result[0]) if isinstance(result, tuple) else
                  f"export failed: {type(result).__name__}: {str(result)[:200]}"), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--exporter", choices=EXPORTERS, action="append")
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), metavar="NAME")
    args = parser.parse_args(argv)
    results = [export_all(args.out_dir, exporter, args.only, verbose=True)
               for exporter in args.exporter or EXPORTERS]
    return 1 if any(isinstance(r, Exception) for rs in results for r in rs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
