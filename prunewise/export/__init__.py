"""ONNX export (float and INT8 QDQ) and ONNX Runtime execution, parity and latency."""

from prunewise.export.deploy import (
    FLOAT_TOLERANCE,
    INT8_AGREEMENT,
    INT8_FLOAT_TOLERANCE,
    DeployConfig,
    deploy,
    parity_problems,
    parity_summary,
    write_int8,
)
from prunewise.export.onnx_export import (
    DEFAULT_OPSET,
    export_float,
    export_int8,
    exporter_of,
    int8_weight_layers,
    onnx_bytes,
)
from prunewise.export.ort_quant import ORT_CALIBRATIONS, ort_quantize
from prunewise.export.runtime import (
    Latency,
    LatencyConfig,
    latency_grid,
    measure_latency,
    onnx_input_shape,
    optimized_ops,
    ort_accuracy,
    ort_agreement,
    ort_logits,
    ort_session,
)

__all__ = [
    "DEFAULT_OPSET",
    "FLOAT_TOLERANCE",
    "INT8_AGREEMENT",
    "INT8_FLOAT_TOLERANCE",
    "ORT_CALIBRATIONS",
    "DeployConfig",
    "Latency",
    "LatencyConfig",
    "deploy",
    "export_float",
    "export_int8",
    "exporter_of",
    "int8_weight_layers",
    "latency_grid",
    "measure_latency",
    "onnx_bytes",
    "onnx_input_shape",
    "optimized_ops",
    "ort_accuracy",
    "ort_agreement",
    "ort_logits",
    "ort_quantize",
    "ort_session",
    "parity_problems",
    "parity_summary",
    "write_int8",
]
