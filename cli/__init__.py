"""dymn-edge: DyMN / EfficientAT audio tagging from training to the edge device.

Parts (each a subpackage): ``runtime`` (torch-free inference, frontend, bundles),
``train`` (torch models, checkpoints), ``export`` (ONNX and friends), ``calibration`` (INT8).
"""

__version__ = "0.1.0"
