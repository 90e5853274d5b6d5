"""Scripts and model definitions that export PyTorch models to ONNX (demo, tests, benchmarks).

Not part of the installed package."""
