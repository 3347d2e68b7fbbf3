"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2``: the sharded pieces against the
same computation in one process. Each rank writes what it measured to ``OUT/rank{R}.json``.

* clip_gradients over FSDP's DTensor gradients returns the single-process global norm and clips
  to the same gradients;
* modulm's AdamW steps the DTensor parameters to the single-process parameters;
* memory_per_process(fsdp) equals the bytes of this rank's local shards.
"""

import copy
import json
import sys
from pathlib import Path

import torch

from modulm.functional.grad import clip_gradients
from modulm.functional.loss import cross_entropy
from modulm.settings import DistributedSettings, SystemSettings
from modulm.strategy import memory_per_process, strategy
from modulm_optim.adamw import adamw
from modulm_transformer import TransformerLM


def main(out: Path) -> None:
    sharding = strategy(DistributedSettings(backend="gloo", strategy="fsdp"), SystemSettings(device="cpu", dtype="float32"))
    rank, world = sharding.ctx.rank, sharding.ctx.world_size
    torch.manual_seed(0)
    whole = TransformerLM(64, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=32)
    sharded = sharding.wrap(sharding.prepare(copy.deepcopy(whole)))
    batch = torch.randint(0, 64, (2 * world, 9), generator=torch.Generator().manual_seed(1))
    mine = batch.chunk(world)[rank]
    cross_entropy(whole(batch[:, :-1]), batch[:, 1:]).backward()
    cross_entropy(sharded(mine[:, :-1]), mine[:, 1:]).backward()  # FSDP averages the ranks' gradients

    whole_norm = float(clip_gradients(list(whole.parameters()), 0.05))
    sharded_norm = clip_gradients(list(sharded.parameters()), 0.05)
    grads = {n: (p.grad.full_tensor() - dict(whole.named_parameters())[n].grad).abs().max().item()
             for n, p in sharded.named_parameters()}
    optimizers = [adamw(lr=1e-2, params=list(m.named_parameters())) for m in (whole, sharded)]
    for optimizer in optimizers:
        optimizer.step()
    params = {n: (p.full_tensor() - dict(whole.named_parameters())[n]).abs().max().item()
              for n, p in sharded.named_parameters()}
    local_params = sum(p.to_local().numel() * p.element_size() for p in sharded.parameters())
    local_state = sum(t.to_local().numel() * t.element_size() for s in optimizers[1].state.values()
                      for t in s.values() if isinstance(t, torch.Tensor))
    predicted = memory_per_process(sharded, 8.0, True, world)
    result = {"whole_norm": whole_norm, "sharded_norm": float(sharded_norm), "norm_type": type(sharded_norm).__name__,
              "grad_error": max(grads.values()), "param_error": max(params.values()),
              "local_params": local_params, "local_state": local_state, "predicted_params": predicted.parameters,
              "predicted_state": predicted.optimizer, "whole_params": sum(p.numel() * 4 for p in whole.parameters()),
              "param_type": type(next(sharded.parameters())).__name__}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
