"""The training gangs ``rlhfless`` may choose among (``--train-gpus 0``): sizes a real run's
``train.slots`` could take on the cluster whose devices hold the trainer's state.

A size is a multiple of ``tp`` (a gang hosts whole rollout engines on the slots they release)
and either part of one node or whole nodes (:func:`~rlhfless.sim.run.check_train_gpus`). It must
hold the sharded training state (bf16 weights, fp32 master weights, two Adam moments, bf16
gradients: ``ADAM_STATE_BYTES_PER_PARAM``) and the reference model's bf16 weights when there is
one, in ``MEMORY_FRACTION`` of its devices' memory; activations are assumed to fit in the rest
(micro-batches of a few sequences, as the workload's ``micro_batch``). The choice among them is
:func:`rlhfless.scaling.cheapest_gang`: the cheapest within the scaler's 3% of the fastest.
Where no size holds the state (70B with PPO on 32 A100s of 40 GB), the gang is every GPU, as
the serverful systems train there too; the model does not price the CPU offload such a job
would need.
"""

from __future__ import annotations

# The share of a device's memory the sharded state may take (the KV-cache sizing's 90%).
MEMORY_FRACTION = 0.9


def gang_sizes(
    gpus: int, per_node: int, tp: int, state_bytes: float, memory_bytes: float
) -> list[int]:
    """Every gang size on ``gpus`` GPUs (``per_node`` a node) that holds ``state_bytes``,
    smallest first; empty when even the whole cluster cannot."""
    sizes = [n for n in range(tp, gpus + 1, tp) if n <= per_node or n % per_node == 0]
    return [n for n in sizes if state_bytes <= n * memory_bytes * MEMORY_FRACTION]
