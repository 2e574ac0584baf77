"""fastscore.distributed with 2 processes on gloo over loopback, started here: the gathered
samples equal one process's run row for row, and a DDP step with the sharded fused loss
gives one process's gradient on the whole batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from fastscore import distributed, losses, samplers
from fastscore.sde import VPSDE

sys.path.insert(0, os.path.dirname(__file__))
from distributed_cases import CASES, gaussian_score, make_model, train_batch  # noqa: E402

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD),
               OUT=str(out))
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    procs = [subprocess.Popen([sys.executable, worker], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES()))
def test_gathered_samples_equal_one_process(ranks, name):
    sampler, args, kwargs = CASES()[name]
    want = sampler(*args, **kwargs)
    for r in range(WORLD):
        assert torch.equal(ranks[r][name], want), f"rank {r}"


def test_local_rows_are_the_ranks_block(ranks):
    sampler, args, kwargs = CASES()["annealed_langevin"]
    want = sampler(*args, **kwargs)
    assert [len(ranks[r]["annealed_langevin_local"]) for r in range(WORLD)] == [5, 4]
    assert torch.equal(torch.cat([ranks[r]["annealed_langevin_local"] for r in range(WORLD)]), want)


@pytest.mark.parametrize("sizes", [(8, 8), (5, 11)])
def test_ddp_gradient_equals_one_process(ranks, sizes):
    model = make_model()
    x, sigmas = train_batch(sum(sizes))
    losses.anneal_dsm(model, x, sigmas, seed=3).backward()
    for r in range(WORLD):
        for got, p in zip(ranks[r][f"grads_{sizes[0]}_{sizes[1]}"], model.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_shard_rows_cover_the_batch_once():
    for n in (0, 1, 7, 8, 9):
        blocks = [distributed.shard_rows(n, r, 3) for r in range(3)]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_rows(4, 3, 3)


def test_errors_without_a_group_and_for_coupled_rows(tmp_path):
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.shard_rows(4)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="step_size_mode='per_sample'"):
            distributed.sample(samplers.pc_sample, gaussian_score, VPSDE(N=40), (4, 2))
        with pytest.raises(ValueError, match="rk45"):
            distributed.sample(samplers.ode_sample, gaussian_score, VPSDE(N=40), (4, 2))
        with pytest.raises(TypeError, match="offset"):
            distributed.sample(lambda y: y, torch.zeros(2))
        with pytest.raises(ValueError, match="batch_sizes"):
            distributed.loss(losses.anneal_dsm, gaussian_score, torch.zeros(3, 2), [1.0], batch_sizes=[2])
        # One rank: sample() is the sampler itself.
        sampler, args, kwargs = CASES()["pc_sample"]
        assert torch.equal(distributed.sample(sampler, *args, **kwargs), sampler(*args, **kwargs))
    finally:
        dist.destroy_process_group()
