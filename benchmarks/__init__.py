"""Reproducible benchmark sweeps: `python -m benchmarks dense [--quick] [--json FILE]`.

Each sweep runs every case on every provider (refimpl in float32, accel on CPU and CUDA when
present, TorchRec 1.8 when importable or else the plain-torch transcription of its forward in
`benchmarks.anchors`, and a bare-GEMM reference), reports median times with a written work model
(GFLOP/s or GB/s), and the anchor / accel ratio measured in the same process.
"""
