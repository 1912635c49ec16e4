"""Where and in what precision the training forward runs: ``trainer.device``, ``trainer.precision``."""
from __future__ import annotations

import logging

import torch

from mtl_train import registry
from mtl_train.config import TrainerConfig
from mtl_train.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise ``torch.device(name)``.

    Raises ConfigError for an unknown device or cuda requested without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: '{name}' requested but CUDA is not available")
    return dev


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (copied without blocking; the batch itself on CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


PRECISIONS = registry.field_meta(TrainerConfig, "precision")["choices"]  # the values config validation accepts


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CPU with Intel AMX tiles or
    AVX512-BF16 instructions, an NVIDIA GPU of compute capability 8.0 (Ampere) or newer."""
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``trainer.precision`` -> the autocast dtype of the training forward (None for fp32).

    bf16 is mixed precision in the sense of Micikevicius et al., "Mixed Precision Training"
    (ICLR 2018) with bfloat16 (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning
    Training", 2019): float32 master weights, optimizer state, towers, losses and balancers;
    the embedding and the backbone's GEMMs in bfloat16 under ``torch.autocast``. bfloat16 keeps
    float32's exponent range, so no loss scaling is needed (fp16 would need it and is not
    offered). Fast where the hardware has bf16 matrix units (:func:`native_bf16`: Intel AMX /
    AVX512-BF16 CPUs, NVIDIA Ampere and newer); elsewhere it runs, slower than fp32, with a
    warning. ``auto`` is bf16 where :func:`native_bf16`, else fp32 (the default stays fp32: a
    config then trains to the same numbers on every machine; see the README's "Speed").
    Evaluation and prediction always run in float32.

    Raises:
        ConfigError: a value other than fp32, bf16 or auto.
    """
    if name not in PRECISIONS:
        hint = " (fp16 needs loss scaling; use bf16)" if name == "fp16" else ""
        raise ConfigError(f"trainer.precision: '{name}' is not one of {', '.join(PRECISIONS)}{hint}")
    if name == "fp32":
        return None
    native = native_bf16(device)
    if name == "auto":
        return torch.bfloat16 if native else None
    if not native:
        log.warning("trainer.precision=bf16: this %s has no native bfloat16 matrix unit; expect it slower than fp32",
                    device.type.upper())
    return torch.bfloat16
