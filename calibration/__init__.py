"""INT8 calibration and quantized-accuracy validation (builds on ``dymn_edge.runtime``)."""
