"""trainer.precision=bf16: backbone in bfloat16 autocast, float32 master weights, towers and losses."""
import pytest
import torch
from test_models import MODELS, batch, graph_cfg, model_cfg, schema

from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model
from mtl_train.train.device import resolve_precision


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def test_resolve_precision_values_and_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"trainer.precision: 'fp16' .*use bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="trainer.precision: 'fp64' is not one of fp32, bf16"):
        resolve_precision("fp64", cpu)


def _grads(m, b, precision):
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = m(b)
    losses, _ = m.graph.losses(out, b["labels"])
    losses.sum().backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_bf16_keeps_float32_logits_and_gradients_close_to_fp32(name):
    torch.manual_seed(0)
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg(name), graph_cfg())
    b = batch(256, s)
    out16, g16 = _grads(m, b, "bf16")
    out32, g32 = _grads(m, b, "fp32")
    assert out16["logits"].dtype == torch.float32  # towers and losses stay float32
    if name in ("mmoe", "omoe", "cgc", "ple"):
        assert out16["shared"].dtype == torch.bfloat16 and out32["shared"].dtype == torch.float32
    assert g16.keys() == g32.keys()
    for n, g in g16.items():
        assert g.dtype == torch.float32, n  # master weights get float32 gradients
    # bfloat16 keeps 8 significant bits: logits agree to ~1e-4 here, the whole gradient to < 1 %
    assert 0 < (out16["logits"] - out32["logits"]).abs().max() < 5e-3
    flat16 = torch.cat([g.flatten() for g in g16.values()])
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.9995
    assert ((flat16 - flat32).norm() / flat32.norm()) < 0.02


def test_bf16_training_lowers_the_loss_like_fp32():
    s = schema(num_tasks=2)
    b = batch(512, s)
    # a learnable target: task 0 = (a > 3), task 1 = (b > 2)
    b["labels"] = torch.stack([(b["sparse"][:, 0] > 3), (b["sparse"][:, 1] > 2)], 1).float()
    final = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        m = build_model(s, model_cfg("mmoe", num_experts=3), graph_cfg())
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        first = None
        for _ in range(60):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = m(b)
            losses, _ = m.graph.losses(out, b["labels"])
            first = float(losses.detach().sum()) if first is None else first
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
        final[precision] = float(losses.detach().sum())
        assert final[precision] < 0.25 * first, precision
    assert final["bf16"] < 2 * final["fp32"] + 0.02


def test_bf16_cli_run_records_precision_logs_steps_and_evaluates_in_float32(tmp_path):
    import json

    from conftest import CENSUS, find_run_dir, run_cli

    if not CENSUS.exists():
        pytest.skip("shared census data not present")
    args = ["dataset=census", f"dataset.path={CENSUS}", "dataset.max_rows=600", "trainer.progress=false",
            "trainer.batch_size=64", "trainer.epochs=2", "model.expert_hidden=[16,8]", "model.num_experts=2"]
    proc = run_cli([*args, "trainer.precision=bf16", "trainer.log_every_steps=5"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert (info["precision"], info["sparse_embedding"]) == ("bf16", True)
    out = proc.stderr + proc.stdout
    assert "precision bf16, sparse embedding on" in out
    # without a progress bar the training figures are log lines every log_every_steps
    assert "train @ step 5: loss income=" in out and "train @ step 10: loss income=" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["marital"]["auc"] > 0.8
    # eval of best.pt (float32) reproduces the run's own test metrics exactly
    run_cli(["mode=eval", f"checkpoint={run}", "hydra.run.dir=ev"], cwd=tmp_path)
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["test"] == metrics["test"]
