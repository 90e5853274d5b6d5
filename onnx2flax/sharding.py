"""Run a converted model on several devices with JAX's SPMD (``jax.sharding``).

Two helpers::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    variables = shard_variables(converted.variables, mesh, mode="fsdp")
    apply = data_parallel_apply(converted, mesh, variables)
    y = apply(x)            # x: [N, ...] in the module's layout, N divisible by the mesh size

``shard_variables`` places the variables on the mesh, replicated on every device or, with
``mode="fsdp"``, each array split along its largest axis that the mesh axis divides
(FSDP-style: every device holds a slice, XLA gathers weights where they are used).
Meshes are used with Auto axes (XLA propagates the shardings through the model).
``data_parallel_apply`` jits ``module.apply`` with the batch (axis 0 of every input and
output) split over the mesh axis. The result equals a one-device run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .errors import InvalidInputError

__all__ = ["data_parallel_apply", "shard_variables"]

Mode = Literal["replicate", "fsdp"]


def _auto(mesh: Mesh) -> Mesh:
    """``mesh`` with Auto axes: the converted module's ops (Flax layers, ``lax`` calls)
    let XLA propagate shardings; Explicit axes (``jax.make_mesh``'s default) would ask
    every op for an ``out_sharding``."""
    if not isinstance(mesh, Mesh):
        raise InvalidInputError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return Mesh(mesh.devices, mesh.axis_names,
                axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _axis_name(mesh: Mesh, axis: str | None) -> str:
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise InvalidInputError(f"the mesh has axes {mesh.axis_names}; name the one to use "
                                    "with axis=")
        return mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise InvalidInputError(f"axis {axis!r} is not one of the mesh's axes {mesh.axis_names}")
    return axis


def _fsdp_spec(shape: tuple[int, ...], size: int, axis: str) -> PartitionSpec:
    """Split the largest dim that ``size`` divides (the first of equal ones); else replicate."""
    best = None
    for i, d in enumerate(shape):
        if d % size == 0 and d >= size and (best is None or d > shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*(axis if i == best else None for i in range(len(shape))))


def shard_variables(variables: Any, mesh: Mesh, mode: Mode = "replicate", *,
                    axis: str | None = None) -> Any:
    """Place every array of ``variables`` on ``mesh``.

    ``mode="replicate"``: a full copy on each device. ``mode="fsdp"``: each array is split
    along its largest axis divisible by the size of mesh axis ``axis`` (the mesh's only axis
    by default); arrays with no such axis (small biases, scalars) are replicated.
    """
    mesh = _auto(mesh)
    name = _axis_name(mesh, axis)
    size = mesh.shape[name]
    if mode not in ("replicate", "fsdp"):
        raise InvalidInputError(f"mode must be 'replicate' or 'fsdp', got {mode!r}")

    def place(x):
        spec = _fsdp_spec(tuple(x.shape), size, name) if mode == "fsdp" else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(place, variables)


def data_parallel_apply(converted, mesh: Mesh, variables: Any = None, *,
                        axis: str | None = None, **apply_kwargs) -> Callable[..., Any]:
    """A function ``apply(*inputs)`` running ``converted.module`` data-parallel on ``mesh``.

    Inputs are taken as ``converted.module.apply`` takes them (channels-last images when
    converted so) and their batch axis (axis 0) is split over mesh axis ``axis``; outputs
    come back split the same way (every output must have a batch axis). ``variables``
    defaults to ``converted.variables`` replicated; pass :func:`shard_variables`'s result to shard them FSDP-style.
    ``apply_kwargs`` (e.g. ``train=False``) go to ``module.apply``.
    """
    mesh = _auto(mesh)
    name = _axis_name(mesh, axis)
    if variables is None:
        variables = shard_variables(converted.variables, mesh, "replicate", axis=name)
    batch = NamedSharding(mesh, PartitionSpec(name))
    module = converted.module

    def call(variables, *inputs):
        return module.apply(variables, *inputs, **apply_kwargs)

    run = jax.jit(call, out_shardings=batch)

    def apply(*inputs):
        for i, x in enumerate(inputs):
            if not hasattr(x, "shape") or not x.shape or x.shape[0] % mesh.shape[name]:
                raise InvalidInputError(
                    f"input {i} has shape {list(getattr(x, 'shape', []))}: data-parallel inputs "
                    f"need a batch axis (axis 0) divisible by the {mesh.shape[name]} devices of "
                    f"mesh axis {name!r}")
        placed = [jax.device_put(x, batch) for x in inputs]
        return run(variables, *placed)

    return apply
