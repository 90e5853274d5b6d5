"""Hand-written channels-last Flax versions of the benchmark CNNs, as a Flax user would write
them, with the module names of ``models.py`` so that they run on the variables onnx2flax
converts (``module.apply(converted.variables, x_nhwc)``)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import MOBILENETV3_SMALL, RESNET50_LAYERS, make_divisible


def _bn(name: str, epsilon: float = 1e-5) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=epsilon, name=name)


def _conv(features: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False,
          name: str | None = None) -> nn.Conv:
    p = (k - 1) // 2
    return nn.Conv(features, (k, k), (stride, stride), ((p, p), (p, p)),
                   feature_group_count=groups, use_bias=bias, name=name)


class Downsample(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x):
        return _bn("1")(_conv(self.features, 1, self.stride, name="0")(x))


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x):
        identity = Downsample(self.planes * 4, self.stride, name="downsample")(x) \
            if self.downsample else x
        y = nn.relu(_bn("bn1")(_conv(self.planes, 1, name="conv1")(x)))
        y = nn.relu(_bn("bn2")(_conv(self.planes, 3, self.stride, name="conv2")(y)))
        return nn.relu(_bn("bn3")(_conv(self.planes * 4, 1, name="conv3")(y)) + identity)


class Stage(nn.Module):
    planes: int
    blocks: int
    stride: int

    @nn.compact
    def __call__(self, x):
        for b in range(self.blocks):
            x = Bottleneck(self.planes, self.stride if b == 0 else 1, downsample=b == 0,
                           name=str(b))(x)
        return x


class ResNet50(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):  # x: [N, H, W, 3]
        x = nn.relu(_bn("bn1")(nn.Conv(64, (7, 7), (2, 2), ((3, 3), (3, 3)), use_bias=False,
                                        name="conv1")(x)))
        x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for i, (blocks, planes) in enumerate(zip(RESNET50_LAYERS, (64, 128, 256, 512))):
            x = Stage(planes, blocks, 1 if i == 0 else 2, name=f"layer{i + 1}")(x)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class ConvBNAct(nn.Module):
    features: int
    k: int
    stride: int = 1
    groups: int = 1
    act: Callable | None = None

    @nn.compact
    def __call__(self, x):
        x = _bn("1")(_conv(self.features, self.k, self.stride, self.groups, name="0")(x))
        return x if self.act is None else self.act(x)


class SqueezeExcitation(nn.Module):
    squeeze: int

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(self.squeeze, (1, 1), name="fc1")(s))
        s = nn.Conv(x.shape[-1], (1, 1), name="fc2")(s)
        return x * jax.nn.hard_sigmoid(s)


class Block(nn.Module):
    k: int
    exp: int
    out: int
    se: bool
    act: Callable
    stride: int

    @nn.compact
    def __call__(self, x):
        y, i = x, 0
        if self.exp != x.shape[-1]:
            y = ConvBNAct(self.exp, 1, act=self.act, name=str(i))(y)
            i += 1
        y = ConvBNAct(self.exp, self.k, self.stride, self.exp, self.act, name=str(i))(y)
        i += 1
        if self.se:
            y = SqueezeExcitation(make_divisible(self.exp // 4), name=str(i))(y)
            i += 1
        y = ConvBNAct(self.out, 1, name=str(i))(y)
        return x + y if self.stride == 1 and x.shape[-1] == self.out else y


class Blocks(nn.Module):
    """Holds ``block`` (the torch module's inner Sequential)."""

    cfg: tuple

    @nn.compact
    def __call__(self, x):
        return Block(*self.cfg, name="block")(x)


class Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = ConvBNAct(16, 3, 2, act=jax.nn.hard_swish, name="0")(x)
        for i, (k, exp, out, se, hs, stride) in enumerate(MOBILENETV3_SMALL, 1):
            act = jax.nn.hard_swish if hs else nn.relu
            x = Blocks((k, exp, out, se, act, stride), name=str(i))(x)
        return ConvBNAct(576, 1, act=jax.nn.hard_swish, name=str(len(MOBILENETV3_SMALL) + 1))(x)


class Classifier(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = jax.nn.hard_swish(nn.Dense(1024, name="0")(x))
        return nn.Dense(self.num_classes, name="3")(x)


class MobileNetV3Small(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):  # x: [N, H, W, 3]
        x = jnp.mean(Features(name="features")(x), axis=(1, 2))
        return Classifier(self.num_classes, name="classifier")(x)


# ---- Transformers: Dense layers and their biases are held as onnx2flax names them -------
# (torch's Linear on a rank-3 input exports as MatMul + Add: layer 'query', param 'query_bias')

def _dense(module: nn.Module, x, features: int, name: str):
    y = nn.Dense(features, use_bias=False, name=name)(x)
    return y + module.param(f"{name}_bias", nn.initializers.zeros, (features,))


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU's default: exact erf


class Attention(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x, mask=None):
        b, n, d = x.shape
        h = self.heads
        q, k, v = (_dense(self, x, d, name).reshape(b, n, h, d // h)
                   for name in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d // h))
        if mask is not None:
            scores = scores + mask
        y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return _dense(self, y.reshape(b, n, d), d, "out")


class PreNormBlock(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = x + Attention(self.heads, name="attn")(nn.LayerNorm(1e-6, name="norm1")(x))
        y = _gelu(_dense(self, nn.LayerNorm(1e-6, name="norm2")(x), self.mlp, "fc1"))
        return x + _dense(self, y, d, "fc2")


class ViTBlocks(nn.Module):
    depth: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = PreNormBlock(self.heads, self.mlp, name=str(i))(x)
        return x


class ViTB16(nn.Module):
    patch: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp: int = 3072
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):  # x: [N, H, W, 3]
        x = nn.Conv(self.dim, (self.patch,) * 2, (self.patch,) * 2, "VALID",
                    name="patch_embed")(x)
        b = x.shape[0]
        x = x.reshape(b, -1, self.dim)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
        pos = self.param("pos_embed", nn.initializers.zeros, (1, x.shape[1] + 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), x], axis=1) + pos
        x = ViTBlocks(self.depth, self.heads, self.mlp, name="blocks")(x)
        return nn.Dense(self.num_classes, name="head")(nn.LayerNorm(1e-6, name="norm")(x)[:, 0])


class Table(nn.Module):
    """A bare weight (``<name>.weight``)."""

    shape: tuple

    @nn.compact
    def __call__(self):
        return self.param("weight", nn.initializers.zeros, self.shape)


class PostNormBlock(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        x = nn.LayerNorm(1e-12, name="attention_norm")(
            x + Attention(self.heads, name="attention")(x, mask))
        y = _dense(self, _gelu(_dense(self, x, self.mlp, "intermediate")), d, "output")
        return nn.LayerNorm(1e-12, name="output_norm")(x + y)


class BertLayers(nn.Module):
    depth: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.depth):
            x = PostNormBlock(self.heads, self.mlp, name=str(i))(x, mask)
        return x


class BertBase(nn.Module):
    """Holds the embeddings as onnx2flax folds them at a fixed sequence length (position
    embeddings sliced to ``seq``, the token-type row 0)."""

    vocab: int = 30522
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp: int = 3072
    seq: int = 128

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        words = Table((self.vocab, self.dim), name="word_embeddings")()
        x = (jnp.take(words, input_ids, axis=0)
             + Table((1, self.seq, self.dim), name="position_embeddings")()
             + Table((self.dim,), name="token_type_embeddings")())
        x = nn.LayerNorm(1e-12, name="embeddings_norm")(x)
        mask = (1.0 - attention_mask[:, None, None, :].astype(x.dtype)) * -10000.0
        x = BertLayers(self.depth, self.heads, self.mlp, name="layers")(x, mask)
        return x, jnp.tanh(nn.Dense(self.dim, name="pooler")(x[:, 0]))
