"""Every balancer under 2 gloo ranks equals one process on the concatenated batches.

Each case spawns 2 ranks once (a FileStore rendezvous in tmp_path) and loops over every
``loss=`` method inside; rank r trains on rows [r*b:(r+1)*b] of each global batch, the test
process on the whole batch with no process group. After 20 steps the parameters and the
balancer state must match to 1e-5, and be identical on the two ranks. The labels hold NaNs
so that a task's valid-row counts differ between the ranks (a task with no row on one rank,
a task with no row on either).
"""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import loss_cfg
from omegaconf import OmegaConf

from mtl_train import registry
from mtl_train.balancing.base import build_balancer
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.models.builder import build_model
from mtl_train.train import ddp
from mtl_train.train.optim import build_optimizer

WORLD, ROWS, STEPS = 2, 24, 20
METHODS = sorted(registry.options("loss"))
OVER = {"dwa": {"window_steps": 4}, "static": {"weights": {"a": 2.0}}, "gradnorm": {"lr": 0.1},
        "gradnorm_pcgrad": {"lr": 0.1}, "uncertainty": {"lr": 0.05}}
TCFG = OmegaConf.create({"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0})


def _variants(case):
    """(label, method, sparse embedding, loss overrides): every method with the trainer's CPU
    default (sparse for the loss-weighting ones); on MMoE also PCGrad on a sparse table (sparse
    per-task gradients) and GradNorm's W = the shared representation (Gram matrices summed)."""
    out = [(m, m, not registry.get("loss", m).target.needs_task_gradients, {}) for m in METHODS]
    if case == "mmoe":
        rep = {"target": "shared_representation"}
        out += [("pcgrad+sparse", "pcgrad", True, {}), ("gradnorm+rep", "gradnorm", True, rep),
                ("gradnorm_pcgrad+rep", "gradnorm_pcgrad", False, rep)]
    return out


def _model(case, sparse):
    torch.manual_seed(0)
    feats = [SparseFeature("u", 20), SparseFeature("i", 30)], [DenseFeature("d")]
    if case == "mmoe":
        tasks = [Task("a", "a"), Task("b", "b", parent="a"), Task("r", "r", "regression")]
        mcfg = {"name": "mmoe", "backbone": "mmoe", "num_experts": 3, "expert_hidden": [8, 6]}
        gcfg = {"name": "independent", "tower_hidden": [5], "activation": "relu", "dropout": 0.0,
                "parent_positive_only": False}
    else:
        tasks = [Task("a", "a"), Task("b", "b", parent="a")]
        mcfg = {"name": "esmm", "backbone": "shared_embedding"}
        gcfg = {"name": "esmm", "tower_hidden": [6, 5], "activation": "relu", "dropout": 0.0}
    mcfg = OmegaConf.create({**mcfg, "embedding_dim": 4, "sparse_embedding": sparse, "activation": "relu", "dropout": 0.0})
    return build_model(FeatureSchema(*feats, tasks), mcfg, OmegaConf.create(gcfg))


def _batches(case):
    """STEPS global batches of WORLD * ROWS rows; NaN labels make the counts differ by rank."""
    g = torch.Generator().manual_seed(7)
    out = []
    n = WORLD * ROWS
    for s in range(STEPS):
        a = (torch.rand(n, generator=g) < 0.5).float()
        b = a * (torch.rand(n, generator=g) < 0.5).float()
        cols = [a, b] + ([torch.randn(n, generator=g)] if case == "mmoe" else [])
        labels = torch.stack(cols, 1)
        labels[torch.rand(n, generator=g) < 0.2, 1] = float("nan")  # nulls: counts differ by rank
        if s % 5 == 1:
            labels[:ROWS, 1] = float("nan")  # task b: no row on rank 0, rows on rank 1
        if s % 5 == 3 and case == "mmoe":
            labels[:, 2] = float("nan")  # task r: no row on any rank
        out.append({"sparse": torch.stack([torch.randint(0, 20, (n,), generator=g),
                                           torch.randint(0, 30, (n,), generator=g)], 1),
                    "dense": torch.randn(n, 1, generator=g), "labels": labels})
    return out


def _train(case, method, sparse, over, rank=0, world=1):
    """20 steps as ``Trainer.train_step`` takes them; returns (parameters, balancer state)."""
    model = _model(case, sparse)
    names = model.graph.loss_names
    bal = build_balancer(loss_cfg(method, **OVER.get(method, {}), **over), names, model)
    opts = build_optimizer(model, TCFG)
    fwd = ddp.wrap_model(model, bal, torch.device("cpu"))
    per = WORLD * ROWS // world
    for b in _batches(case):
        local = {k: v[rank * per:(rank + 1) * per] for k, v in b.items()}
        out = fwd(local)
        losses, counts = ddp.global_losses(*model.graph.losses(out, local["labels"]))
        for o in opts:
            o.zero_grad(set_to_none=True)
        bal.step(losses, counts, model, out)
        for o in opts:
            o.step()
    return [p.detach().clone() for p in model.parameters()], bal.state_dict()


def _sparse_gather(rank):
    """The sum over ranks of a sparse gradient by all-gather, the path of backends without a
    sparse all-reduce (NCCL), run on gloo: rank 0 has rows {2: 1, 3: 1}, rank 1 {1: 2, 3: 2, 4: 4}
    (no rank has row 0, where the padding of the shorter rank's rows would land). Returns the
    result's (indices, values): the stored rows, not only the dense sum (a padding row kept
    as a stored zero would be updated by a row-sparse optimizer)."""
    ids = torch.tensor([[2, 3]]) if rank == 0 else torch.tensor([[1, 3, 4, 4]])
    t = torch.sparse_coo_tensor(ids, torch.full((ids.shape[1], 2), rank + 1.0), (5, 2)).coalesce()
    backend = dist.get_backend
    dist.get_backend = lambda *a: "nccl"
    try:
        out = ddp._sparse_sum(t).coalesce()
        return out.indices(), out.values()
    finally:
        dist.get_backend = backend


def _rank(rank, case, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        res = {lab: _train(case, m, sp, over, rank, WORLD) for lab, m, sp, over in _variants(case)}
        res["sparse_gather"] = _sparse_gather(rank)
        wrapped = ddp.wrap_model(_model(case, True), None, torch.device("cpu"))  # a loss-weighting balancer: DDP
        res["forward_sync_buffers"] = getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", None))
        torch.save(res, f"{store}.rank{rank}")
    finally:
        dist.destroy_process_group()


def _flat(state, prefix=""):
    """{path: tensor or value} of a nested state dict (optimizer states, generators, numbers)."""
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else None
    if items is None:
        return {prefix: state}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}/{k}"))
    return out


def _close(a, b):
    if torch.is_tensor(a):
        if a.dtype in (torch.uint8, torch.int64, torch.bool):
            return torch.equal(a, b)
        return torch.allclose(a.double(), b.double(), atol=1e-5, rtol=0, equal_nan=True)
    return a == b or abs(a - b) <= 1e-5


def _equal(a, b):
    return torch.equal(a, b) if torch.is_tensor(a) else a == b or (a != a and b != b)


def _check(case, tmp_path):
    store = tmp_path / "store"
    mp.spawn(_rank, args=(case, str(store)), nprocs=WORLD)
    ranks = [torch.load(f"{store}.rank{r}", weights_only=False) for r in range(WORLD)]
    rows, values = torch.tensor([[1, 2, 3, 4]]), torch.tensor([2.0, 1.0, 3.0, 4.0]).unsqueeze(1).expand(4, 2)
    assert all(torch.equal(r["sparse_gather"][0], rows) and torch.equal(r["sparse_gather"][1], values) for r in ranks)
    # the buffers are constants (see the test below): DDP must not broadcast them before every forward
    assert all(r["forward_sync_buffers"] is False for r in ranks)
    torch.set_num_threads(1)
    for lab, m, sp, over in _variants(case):
        ref_params, ref_state = _train(case, m, sp, over)
        (p0, s0), (p1, s1) = ranks[0][lab], ranks[1][lab]
        assert all(torch.equal(x, y) for x, y in zip(p0, p1)), f"{lab}: ranks' parameters differ"
        f0, f1, fr = _flat(s0), _flat(s1), _flat(ref_state)
        assert f0.keys() == f1.keys() == fr.keys(), lab
        assert all(_equal(f0[k], f1[k]) for k in f0), f"{lab}: ranks' balancer states differ"
        worst = max(float((x - r).abs().max()) for x, r in zip(p0, ref_params))
        assert worst <= 1e-5, f"{lab}: parameters differ from one process by {worst:.2e}"
        bad = [k for k in fr if not _close(f0[k], fr[k])]
        assert not bad, f"{lab}: balancer state differs from one process at {bad}"
        moved = max(float((x - y).abs().max()) for x, y in zip(p0, [p.detach() for p in _model(case, sp).parameters()]))
        assert moved > 1e-3  # the 20 steps trained


def test_every_balancer_on_mmoe_is_exact_under_two_ranks(tmp_path):
    _check("mmoe", tmp_path)


def test_every_balancer_on_esmm_is_exact_under_two_ranks(tmp_path):
    _check("esmm", tmp_path)


def test_without_a_process_group_nothing_is_communicated_or_changed():
    losses, counts = torch.tensor([0.5, 0.25], requires_grad=True), torch.tensor([3.0, 0.0])
    out = ddp.global_losses(losses, counts)
    assert out[0] is losses and out[1] is counts
    model = _model("esmm", False)
    assert ddp.wrap_model(model, None, torch.device("cpu")) is model
    g = [torch.ones(2), None]
    assert ddp.mean_over_ranks(g)[0] is g[0] and ddp.world_size() == 1 and not ddp.active()


def test_model_buffers_are_constants_so_ddp_need_not_broadcast_them():
    # wrap_model passes broadcast_buffers=False: that is exact only while no step changes a buffer
    for case in ("mmoe", "esmm"):
        model = _model(case, True)
        before = {k: v.clone() for k, v in model.named_buffers()}
        assert before  # the embedding offsets at least
        opts = build_optimizer(model, TCFG)
        for b in _batches(case)[:3]:
            losses, counts = model.graph.losses(model(b), b["labels"])
            losses.nan_to_num().sum().backward()
            for o in opts:
                o.step()
        for k, v in model.named_buffers():
            assert torch.equal(v, before[k]), k
