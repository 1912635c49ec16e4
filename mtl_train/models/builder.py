"""Model assembly: FeatureEmbedding -> Backbone -> TaskGraph, from the ``model`` and ``graph`` configs."""
from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from mtl_train import registry
from mtl_train.data.schema import FeatureSchema
from mtl_train.models.backbones.base import MODEL_KEYS, Backbone
from mtl_train.models.embedding import FeatureEmbedding
from mtl_train.models.graphs.base import TaskGraph


def _kwargs(cfg, config: type, skip: tuple[str, ...]) -> dict:
    """The fields of the dataclass ``config`` (the option's typed config) other than ``skip``,
    with their values in ``cfg``: the keyword arguments of the option's constructor."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {f.name: c[f.name] for f in fields(config) if f.name not in skip and f.name in c}


class MultiTaskModel(nn.Module):
    """The whole network: embedding(s), backbone and task graph.

    Shapes: batch {"sparse": [B, F_s], "dense": [B, F_d], ...} -> dict with "logits" [B, T],
    "shared" (the backbone's shared representation, or None) and any graph outputs.

    Called inside ``torch.autocast`` (``trainer.precision=bf16``), the embedding and the
    backbone run in the autocast dtype and the task graph (towers, logits) in float32, on the
    task representations cast back to float32; "shared" stays in the autocast dtype.
    """

    def __init__(self, schema: FeatureSchema, embeddings: nn.ModuleList, backbone: Backbone, graph: TaskGraph):
        super().__init__()
        self.schema = schema
        self.embeddings = embeddings
        self.backbone = backbone
        self.graph = graph

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.backbone.separate_inputs:
            x = [e(batch) for e in self.embeddings]
        else:
            x = self.embeddings[0](batch)
        bo = self.backbone(x)
        dev = bo.tasks[0].device.type
        if torch.is_autocast_enabled(dev):
            # mixed precision covers embedding and backbone; towers and losses stay float32
            with torch.autocast(dev, enabled=False):
                out = self.graph([t.float() for t in bo.tasks])
        else:
            out = self.graph(bo.tasks)
        out["shared"] = bo.shared
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradient from more than one task's loss: the shared
        embedding table, the backbone's shared layers, the graph's shared part, and whatever
        the backbone computes for one task alone (MMoE's gate k, a single-task network and its
        embedding) where the graph lets several losses read that task's representation (ESMM's
        pCTR reaches the CTCVR loss). Each parameter once, in that order."""
        params = [] if self.backbone.separate_inputs else list(self.embeddings.parameters())
        params += self.backbone.shared_parameters() + self.graph.shared_parameters()
        for k in self.graph.shared_inputs():
            params += self.backbone.task_parameters(k)
            if self.backbone.separate_inputs:
                params += list(self.embeddings[k].parameters())
        return list({id(p): p for p in params}.values())

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: the weight of the backbone's last layer shared by every task; where the
        backbone shares none (the shared-embedding presets esmm, aitm, dbmtl, gmsl), the
        graph's last layer that every task's loss reaches (ESMM/DBMTL: the root task's last
        tower/head layer, AITM: the first task's last tower layer, GMSL: the GRU's input weights); [] if
        neither has one. Choice: the backbone's layer first, although a graph's shared layer
        comes after it, so that a backbone keeps the same W under every graph."""
        return self.backbone.last_shared_layer() or self.graph.last_shared_layer()


def build_model(schema: FeatureSchema, model_cfg, graph_cfg, sparse_default: bool = False) -> MultiTaskModel:
    """Build the backbone registered as ``model_cfg.backbone`` with the graph registered as
    ``graph_cfg.name`` (see :mod:`mtl_train.registry`); each constructor gets the fields of its
    option's typed config as keyword arguments.

    ``model_cfg.sparse_embedding`` (true/false) chooses sparse embedding gradients; null
    takes ``sparse_default`` (see :func:`mtl_train.train.optim.sparse_embedding_default`).

    Raises:
        ConfigError: unknown backbone or graph, or an invalid size.
    """
    T = len(schema.tasks)
    entry = registry.get("model", model_cfg.backbone)
    cls = entry.target
    n_emb = T if cls.separate_inputs else 1
    sparse_grad = model_cfg.get("sparse_embedding", None)
    sparse_grad = bool(sparse_default) if sparse_grad is None else bool(sparse_grad)
    embeddings = nn.ModuleList(FeatureEmbedding(schema, model_cfg.embedding_dim, sparse_grad) for _ in range(n_emb))
    backbone = cls(embeddings[0].out_dim, T, **_kwargs(model_cfg, entry.config, MODEL_KEYS))
    g = registry.get("graph", graph_cfg.name)
    graph = g.target(schema, backbone.out_dims, **_kwargs(graph_cfg, g.config, ("name",)))
    return MultiTaskModel(schema, embeddings, backbone, graph)
