"""The conversion pipeline, one module per stage, data flowing one way::

    load       load.py, wire.py      path / bytes / ModelProto -> parsed model, weights mapped
    normalize  normalize.py          decoded Graph: attributes and defaults, inlined functions,
               fold.py, fuse.py,     constant folding, BatchNorm fusion, inputs deciding shapes,
               inputs.py, bounds.py  static bounds
    plan       plan.py               layers, params, which inputs are images
    module     module.py, layers.py  the linen Module walking the graph through the registry

``onnx2flax.converter`` drives it (``convert``) and runs its result (``ConvertedModel.run``).
"""
