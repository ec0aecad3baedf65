"""Model export: PyTorch to ONNX bundles (builds on ``dymn_edge.train`` and ``dymn_edge.runtime``)."""
