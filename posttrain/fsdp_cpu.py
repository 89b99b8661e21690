"""FSDP in CPU processes, for testing only: POSTTRAIN_FSDP_ON_CPU=1 lets `--accelerate-config fsdp` run on a machine
without CUDA, as a gloo process group, so that the test suite trains under FSDP2 what GPUs would.

accelerate switches a process group to FSDP only when it is one of GPUs (AcceleratorState.__init__ leaves a CPU group
as MULTI_CPU, which gets DDP). With the opt-in, the launched processes make accelerate's state FSDP right after it is
built, as it would have on GPUs; everything after that (fully_shard, the sharded optimizer, saving) is accelerate's.
It is slow and only for checking that a recipe trains sharded: train on GPUs.
"""

from __future__ import annotations

import os

OPT_IN = "POSTTRAIN_FSDP_ON_CPU"


def asked() -> bool:
    """True when the user (or the test suite) opted in to FSDP on the CPU."""
    return os.environ.get(OPT_IN, "") == "1"


def treat_cpu_group_as_fsdp() -> None:
    """Make accelerate run FSDP in a CPU process group, as it does in a GPU one. Idempotent; call it before the
    trainer builds its Accelerator."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    build = AcceleratorState.__init__
    if getattr(build, "fsdp_on_cpu", False):
        return

    def build_as_on_gpus(state, *args, fsdp_plugin=None, **kwargs) -> None:
        build(state, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # What the GPU branch of AcceleratorState.__init__ does (the mixed-precision policy aside: CPUs run fp32)
        if fsdp_plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    build_as_on_gpus.fsdp_on_cpu = True
    AcceleratorState.__init__ = build_as_on_gpus
