"""The vocabulary every stage shares, and nothing else: the decoded graph (``graph``),
layouts (``layout``) and how inputs and outputs cross the module's boundary
(``boundary``), the work and memory budget (``limits``), the op registry (``registry``) and
how a handler's failure becomes the package's error (``guard``),
output files (``files``) and progress messages (``progress``).

Modules here import only each other and ``onnx2flax.errors``; the stages
(``onnx2flax._pipeline``), the op handlers (``onnx2flax.ops``) and the tools build on them.
"""
