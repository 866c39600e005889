"""``make gpu-check``: the GPU path of mmdeform proven in one prepared command.

The check runs on a CUDA machine that has its own torch and no package index
(wheels carried in ``.whl/``, see ``.dev_scripts/gpu_wheels.sh``): it installs the
wheels, builds ``mmdeform._C`` with CUDA, runs the CUDA tests, benchmarks the
op, trains and evaluates the synthetic model in fp16 and bf16, times a
COCO-shaped training step and inference, runs the distributed launcher, and
ends with a summary table. ``--dry-run`` runs every step's code path that
needs no CUDA on the CPU, with tiny sizes.

Modules: :mod:`.runner` (time limits, subprocesses, the summary),
:mod:`.wheels` (the carried wheels), :mod:`.steps` (the steps and ``main``)
and :mod:`.workloads` (what runs inside the worker processes; the only
module that imports torch). Everything but ``workloads`` uses the standard
library alone: the check starts before mmengine is installed.
"""
