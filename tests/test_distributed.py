"""mtl_train/distributed.py: the launchers' environments, the backend choice, and a dead rank
named in one line (2 processes, gloo)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mtl_train import distributed
from mtl_train.distributed import DistEnv, DistributedError, backend_for, detect, first_host
from mtl_train.errors import ConfigError


def test_detect_reads_torchrun_and_srun_and_is_none_for_one_process():
    assert detect({}) is None
    assert detect({"RANK": "0", "WORLD_SIZE": "1"}) is None  # torchrun --nproc-per-node=1: nothing changes
    assert detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}) == \
        DistEnv(3, 4, 1, "h0", 1234, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_STEP_NODELIST": "gpu[07-08,11]"}
    assert detect(slurm) == DistEnv(5, 8, 1, "gpu07", 29500 + 242, "slurm")
    assert detect(dict(slurm, MASTER_ADDR="m", MASTER_PORT="7")) == DistEnv(5, 8, 1, "m", 7, "slurm")
    # an sbatch script itself (no srun step): one process, whatever SLURM_NTASKS says
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    with pytest.raises(ConfigError, match="^WORLD_SIZE: the launcher's environment variable must be an integer"):
        detect({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="^RANK: 4 outside the world size 2$"):
        detect({"RANK": "4", "WORLD_SIZE": "2"})
    assert first_host("node3") == "node3" and first_host("a1,b2") == "a1" and first_host("n[1-4]") == "n1"


def test_backend_follows_the_device_and_refuses_what_it_cannot_run():
    assert backend_for(torch.device("cpu"), None) == "gloo"
    assert backend_for(torch.device("cpu"), "gloo") == "gloo"
    with pytest.raises(ConfigError, match="^trainer.dist_backend: nccl needs CUDA devices; this run trains on cpu"):
        backend_for(torch.device("cpu"), "nccl")
    with pytest.raises(ConfigError, match="^trainer.dist_backend: 'ucc' is not one of gloo, nccl$"):
        backend_for(torch.device("cpu"), "ucc")


def test_one_process_helpers_are_identities():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.gather_objects(3) == [3]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.on_main(lambda: 5) == 5 == distributed.main_first(lambda: 5)


def _dead_rank(rank: int, port: int, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    distributed.HEARTBEAT_S = 0.2
    distributed.init(DistEnv(rank, 2, rank, "127.0.0.1", port, "torchrun"), torch.device("cpu"), None, 20.0)
    distributed.set_step(3)
    distributed.any_rank(False)  # both ranks pass step 3 together
    if rank == 1:
        os._exit(0)  # dies without a word
    distributed.set_step(4)
    try:
        with distributed.collectives():
            distributed.any_rank(False)
    except DistributedError as e:
        out.put(str(e))
    else:
        out.put("no error")


def test_a_dead_rank_ends_the_collective_with_one_line_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_dead_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    msg = out.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert msg.startswith("rank 0: rank 1 stopped answering (no heartbeat: dead) at step 4; the job ends")
