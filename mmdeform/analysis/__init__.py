"""Analysis of a detector: FLOPs, speed, export, training logs."""
from .benchmark import BenchmarkResult, benchmark_model, format_benchmark
from .export import (
    TensorModeWrapper,
    example_inputs,
    export_onnx,
    export_program,
    run_onnx,
)
from .flops import FlopReport, count_flops, format_flop_report, ms_deform_attn_flop
from .logs import find_scalar_log

__all__ = ['BenchmarkResult', 'FlopReport', 'TensorModeWrapper', 'benchmark_model',
           'count_flops', 'example_inputs', 'export_onnx', 'export_program', 'find_scalar_log',
           'format_benchmark', 'format_flop_report', 'ms_deform_attn_flop', 'run_onnx']
