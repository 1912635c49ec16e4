"""trainer.precision=bf16 (mtl_train.train.device): backbone in bfloat16 autocast, float32 master
weights, towers and losses."""
import pytest
import torch
from helpers import MODELS, batch, graph_cfg, model_cfg, schema

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
    with pytest.raises(ConfigError, match="trainer.precision: 'fp64' is not one of fp32, bf16, auto"):
        resolve_precision("fp64", cpu)


def test_auto_precision_is_bf16_only_where_the_device_has_bf16_matrix_units(monkeypatch):
    from mtl_train.train import device

    cpu = torch.device("cpu")
    for amx, avx512_bf16, expect in ((False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert device.native_bf16(cpu) is (expect is not None)
        assert resolve_precision("auto", cpu) is expect
        assert resolve_precision("bf16", cpu) is torch.bfloat16  # asked for: bf16 anyway (with a warning without units)
    for capability, expect in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert device.native_bf16(torch.device("cuda")) is expect


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
