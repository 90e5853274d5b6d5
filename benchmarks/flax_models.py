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
