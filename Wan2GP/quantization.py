"""8-bit transformer weights (torchao), for budgets where the 16-bit weights fit neither on the device nor in the
host memory they would stream from; and the fast path's fp8 weights with fp8 activations ("fp8_dynamic", --fast).

Only the Linear layers inside the transformer blocks (``blocks``, ``vace_blocks``) are quantized: weight-only, one
scale per output channel, int8 (the default) or float8 e4m3. Activations and LoRA adapters stay in the run dtype
(peft wraps a quantized Linear and adds its low-rank term unmerged), and the embedders and the head keep their full
precision, as upstream keeps patch_embedding and head above the rest. int8 is the default because its error against
the 16-bit weights is less than half fp8's at the same bytes (one A14B forward on the H200: 1.87e-2 against 4.27e-2,
bench/README.md, "Memory profiles").
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch

WEIGHT_FORMATS = ("native", "int8", "fp8", "fp8_dynamic")  # "native": the definition's own dtype (bf16 on a GPU)
QUANTIZED_FORMATS = ("int8", "fp8", "fp8_dynamic")
# fp8 weights and fp8 activations (scaled per row at each call): the fast path, matmuls on the fp8 tensor cores, which
# torchao only runs on CUDA from compute capability 8.9 (Ada, Hopper) up; elsewhere the engine keeps its weights native
FAST_FORMAT = "fp8_dynamic"
BLOCK_LISTS = ("blocks", "vace_blocks")  # the ModuleLists of a Wan transformer that hold its blocks

FLOAT8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448: the largest e4m3 value, which a row's maximum maps to

# Per quantized Linear, per output channel: a float32 scale, and int8's zero point (torchao's per-row layouts).
_ROW_OVERHEAD_BYTES = {"int8": 4 + 1, "fp8": 4, "fp8_dynamic": 4}


def check_weight_format(value: str) -> str:
    if value not in WEIGHT_FORMATS:
        raise ValueError(f"transformer weights: expected one of {', '.join(WEIGHT_FORMATS)}, got {value!r}")
    return value


def transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [block for name in BLOCK_LISTS for block in getattr(transformer, name, None) or []]


def torchao_config(weights: str):  # -> torchao AOBaseConfig; torchao is imported only when 8 bits are asked for
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    if weights == "int8":
        return Int8WeightOnlyConfig()
    if weights == "fp8":
        return Float8WeightOnlyConfig()
    if weights == FAST_FORMAT:
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise ValueError(f"transformer weights: expected one of {', '.join(QUANTIZED_FORMATS)}, got {weights!r}")


def fp8_matmuls_available(device: torch.device) -> bool:
    """Whether torchao runs fp8 x fp8 matmuls on `device` (FAST_FORMAT): CUDA, compute capability 8.9 or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_transformer(
    transformer: torch.nn.Module, weights: str, *, work_device: torch.device, keep_on: torch.device
) -> None:
    """Quantize the Linear layers of every block to `weights`, one block at a time on `work_device` (a GPU
    quantizes a 14B transformer in seconds, and holds one 16-bit block at a time), each left on `keep_on` (host
    memory for streamed blocks, the device for resident ones); the non-block layers go to `keep_on` unchanged."""
    from torchao.quantization import quantize_

    config = torchao_config(weights)
    _teach_device_moves()
    for block in transformer_blocks(transformer):
        block.to(work_device)
        quantize_(block, config)
        block.to(keep_on)
    transformer.to(keep_on)


def is_quantized(tensor: torch.Tensor) -> bool:
    """A torchao weight tensor (a wrapper whose data lives in inner tensors: `qdata`, `scale`, ...)."""
    return hasattr(type(tensor), "tensor_data_names") and hasattr(tensor, "_apply_fn_to_data")


def is_float8_rows(tensor: torch.Tensor) -> bool:
    """A torchao float8 weight with one scale per output row (torchao's Float8Tensor as "fp8" and FAST_FORMAT make
    it): the one quantized kind a merged LoRA is written into, by quantizing the merged weight again
    (`float8_rows`)."""
    return (
        type(tensor).__name__ == "Float8Tensor"
        and is_quantized(tensor)
        and tensor.qdata.dtype == torch.float8_e4m3fn
        and tensor.ndim == 2
        and list(getattr(tensor, "block_size", None) or []) == [1, tensor.shape[1]]
        and tuple(tensor.scale.shape) == (tensor.shape[0], 1)
    )


def float8_rows(
    base_qdata: torch.Tensor, base_scale: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float8 weight (data, per-row scale) of `base + delta`: base the float8 weight (data, scale) a LoRA is
    merged into, delta the merged LoRAs' float32 change. Computed as torchao's `Float8Tensor.from_hp(value,
    granularity=PerRow())` computes it from the float32 sum (a test holds it to that), written as one function so a
    GPU compiles it into two fused passes over the weight (the row maxima, then the rounding) instead of eager torch's
    float32 round trips (a re-merge of an A14B expert took 0.105 s on the H200, bench/README.md)."""
    value = base_qdata.to(torch.float32) * base_scale + delta
    scale = value.abs().amax(dim=1, keepdim=True) / FLOAT8_MAX
    qdata = (value / scale).clamp(min=-FLOAT8_MAX, max=FLOAT8_MAX).to(base_qdata.dtype)
    return qdata, scale


def snapshot(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A copy of a weight on `device`: a plain tensor, or a torchao tensor with copies of its inner tensors."""
    if is_quantized(tensor):
        return tensor._apply_fn_to_data(lambda inner: inner.to(device, copy=True))
    return tensor.detach().to(device, copy=True)


def copy_into(tensor: torch.Tensor, source: torch.Tensor) -> None:
    """Write `source` (a snapshot of the same kind and shape) into `tensor` in place: a compiled graph that reads the
    weight sees the new values without a recompile."""
    if is_quantized(tensor):
        for name, inner in inner_tensors(tensor):
            inner.copy_(getattr(source, name))
    else:
        tensor.copy_(source)


def inner_tensors(tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """A torchao tensor's inner (plain) tensors by attribute name."""
    kind = type(tensor)
    for name in (*kind.tensor_data_names, *getattr(kind, "optional_tensor_data_names", ())):
        inner = getattr(tensor, name, None)
        if inner is not None:
            yield name, inner


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds: its inner tensors' for a torchao tensor (its own element size is the original dtype's)."""
    if is_quantized(tensor):
        return sum(inner.numel() * inner.element_size() for _, inner in inner_tensors(tensor))
    return tensor.numel() * tensor.element_size()


def quantized_linear_bytes(linear: torch.nn.Linear, weights: str) -> int:
    """Bytes of a Linear's weight (built on the meta device) once quantized to `weights`: one byte per element, and
    per output row a float32 scale (and int8's zero point), torchao's per-row layouts."""
    return linear.weight.numel() + linear.out_features * _ROW_OVERHEAD_BYTES[weights]


def _teach_device_moves() -> None:
    """Let diffusers' group offloading stream torchao's weight tensors: `.to(device, non_blocking=...)` makes a
    fresh copy of the inner tensors.

    torchao 0.18's own `.to()` drops `non_blocking` (diffusers' copies on the side stream would block the host) and,
    under torch 2.11, fails every move from the host to the GPU ("Attempted to set the storage of a tensor on device
    cuda:0 to a storage on different device cpu", seen on the H200). Registered with torchao's own extension hook
    (`implements`), once per class; moves within a device keep torchao's behaviour."""
    from torchao.quantization import Float8Tensor, Int8Tensor

    aten = torch.ops.aten
    for kind in (Int8Tensor, Float8Tensor):
        torchao_to = kind._ATEN_OP_TABLE[kind].get(aten.to.dtype_layout)
        if torchao_to is not None and inspect.unwrap(torchao_to) is _move_between_devices:
            continue  # registered already

        def bound(func, types, args, kwargs, torchao_to=torchao_to):
            return _move_between_devices(func, types, args, kwargs, torchao_to)

        bound.__wrapped__ = _move_between_devices
        kind.implements(aten.to.dtype_layout)(bound)


def _move_between_devices(func, types, args, kwargs, torchao_to):
    tensor, device = args[0], kwargs.get("device")
    non_blocking = kwargs.pop("non_blocking", False)
    kwargs.pop("copy", None)
    if device is None or torch.device(device) == tensor.device:
        return torchao_to(func, types, args, kwargs) if torchao_to is not None else tensor
    return tensor._apply_fn_to_data(lambda inner: inner.to(device, non_blocking=non_blocking))
