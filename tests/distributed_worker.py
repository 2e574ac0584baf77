"""One rank of tests/test_distributed.py (started by the test, gloo over loopback): runs the
sharded samplers and a DDP training step and saves what rank RANK got to OUT/rank{RANK}.pt."""

import os
import sys

import torch
import torch.distributed as dist

from fastscore import distributed, k_diffusion, losses, samplers
from fastscore.sde import VPSDE, geometric_sigmas

sys.path.insert(0, os.path.dirname(__file__))
from distributed_cases import CASES, make_model, train_batch  # noqa: E402


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    got = {}
    for name, (sampler, args, kwargs) in CASES().items():
        got[name] = distributed.sample(sampler, *args, **kwargs)
    local = distributed.sample(samplers.annealed_langevin, *CASES()["annealed_langevin"][1],
                               gather=False, **CASES()["annealed_langevin"][2])
    got["annealed_langevin_local"] = local

    for sizes in ([8, 8], [5, 11]):
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        x, sigmas = train_batch(sum(sizes))
        start = sum(sizes[:rank])
        block = x[start:start + sizes[rank]]
        loss = distributed.loss(losses.anneal_dsm, model, block, sigmas, seed=3,
                                batch_sizes=None if sizes[0] == sizes[1] else sizes)
        loss.backward()
        got[f"grads_{sizes[0]}_{sizes[1]}"] = [p.grad.clone() for p in model.parameters()]
    torch.save(got, os.path.join(os.environ["OUT"], f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
