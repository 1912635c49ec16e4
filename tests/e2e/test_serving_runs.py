"""mtl-train mode=predict checkpoint=<export folder>: the CLI scores a file with the exported
model; bad raw rows end in one line, exit 2, nothing written."""
import numpy as np
import pyarrow.parquet as pq
import torch
from conftest import run_cli
from helpers import export_model, make_cfg, parquet_cfg

from mtl_train.data.datasets import load_dataset
from mtl_train.models.builder import build_model


def test_predict_with_an_export_folder_and_bad_raw_rows(data):
    tmp, _, val = data
    dataset = parquet_cfg(tmp)
    cfg = make_cfg("model=mmoe", "graph=esmm", "model.num_experts=2", "model.expert_hidden=[8]", "graph.tower_hidden=[4]")
    bundle = load_dataset(dataset, 0)
    torch.manual_seed(0)
    model = build_model(bundle.schema, cfg.model, cfg.graph)
    from omegaconf import OmegaConf

    config = {"dataset": OmegaConf.to_container(dataset), "graph": OmegaConf.to_container(cfg.graph)}
    export = export_model(model, bundle.val, config, tmp / "export")
    out = tmp / "p.csv"
    proc = run_cli(["mode=predict", f"checkpoint={export}", f"infer.input={tmp / 'val.parquet'}", f"infer.output={out}",
                    f"hydra.run.dir={tmp / 'run'}"], tmp)
    assert f"predictions: {out}" in proc.stdout
    import pyarrow.csv as pcsv

    tbl = pcsv.read_csv(out)
    assert tbl.column_names == ["user", "city", "prob_click", "label_click", "prob_purchase", "label_purchase",
                                "prob_purchase_given_click", "label_purchase_given_click"]
    with torch.no_grad():  # the eager model on the training encoder's rows
        enc = bundle.schema.encoders.encode(val)
        batch = {"sparse": torch.from_numpy(enc["sparse"]), "dense": torch.from_numpy(enc["dense"]),
                 "seq": torch.from_numpy(enc["seq"]), "labels": torch.from_numpy(enc["labels"])}
        want = model.graph.eval_outputs(model.eval()(batch), batch)
    for name in ("click", "purchase", "purchase_given_click"):
        assert np.abs(tbl.column(f"prob_{name}").to_numpy() - want[name].score.numpy()).max() <= 1e-5
    pq.write_table(val.drop_columns(["price"]), tmp / "no_price.parquet")
    bad = run_cli(["mode=predict", f"checkpoint={export}", f"infer.input={tmp / 'no_price.parquet'}",
                   f"infer.output={tmp / 'q.parquet'}", f"hydra.run.dir={tmp / 'run2'}"], tmp, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (f"mtl-train: error: {tmp / 'no_price.parquet'}: missing feature column "
                                                   f"'price'; have ['user', 'city', 'hist', 'click', 'buy']")
    assert not (tmp / "q.parquet").exists()
