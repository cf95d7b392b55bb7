"""Placements (Wan2GP.placement) made real: component sizes read from configs, diffusers' group offloading applied.

Sizes come from each component's config built on the meta device (accelerate's `init_empty_weights`), so the engine
knows what a model needs before it reads a byte of weights, and a resident model still loads straight onto the GPU.
Offloading is diffusers' own (`apply_group_offloading`): block-level with a side stream for the transformers (one
block copied in while the previous one computes; the blocks the budget has room for stay on the device), leaf-level
for the encoders. On CUDA the host copies live in page-locked buffers made here (PinnedHostMemory); on a CPU the same
hooks run without a stream, which is how the tests exercise them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.hooks.group_offloading import apply_group_offloading
from loguru import logger
from transformers import AutoConfig, CLIPVisionModel, UMT5EncoderModel

from Wan2GP.catalog import ModelDefinition
from Wan2GP.model_folders import TRANSFORMER_SUBFOLDERS
from Wan2GP.placement import RESIDENT_BLOCK_ADAPTER_SHARE, ModelSizes, Placement
from Wan2GP.quantization import (
    inner_tensors,
    is_quantized,
    quantized_linear_bytes,
    tensor_bytes,
    transformer_blocks,
)


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once), at `dtype` where given (floating ones)."""
    total = 0
    for tensor in {id(t): t for t in (*module.parameters(), *module.buffers())}.values():
        if dtype is not None and tensor.is_floating_point():
            total += tensor.numel() * dtype.itemsize
        else:
            total += tensor_bytes(tensor)
    return total


def _block_bytes(block: torch.nn.Module, dtype: torch.dtype, weights: str) -> int:
    """A block's bytes at `dtype`, its Linear weights in `weights` (Wan2GP.quantization quantizes those alone)."""
    total = module_bytes(block, dtype)
    if weights != "native":
        for linear in (module for module in block.modules() if isinstance(module, torch.nn.Linear)):
            total += quantized_linear_bytes(linear, weights) - linear.weight.numel() * dtype.itemsize
    return total


def _largest_leaf(module: torch.nn.Module, dtype: torch.dtype) -> int:
    return max(
        (module_bytes(leaf, dtype) for leaf in module.modules() if not list(leaf.children())),
        default=0,
    )


def model_sizes(
    definition: ModelDefinition,
    weights_dir: Path,
    *,
    transformer_dtype: torch.dtype,
    vae_dtype: torch.dtype,
    text_dtype: torch.dtype,
    weights: Sequence[str] = ("native",),
) -> dict[str, ModelSizes]:
    """Each component's bytes at its run dtype, from its config alone (modules built on the meta device), for each
    format of the transformers' block weights in `weights` ("native", "int8", "fp8")."""
    transformer_class = WanVACETransformer3DModel if definition.is_vace else WanTransformer3DModel
    experts: dict[str, dict[str, int]] = {name: {} for name in weights}
    largest_block = dict.fromkeys(("native", *weights), 0)
    rest = model_dim = blocks_count = 0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    with init_empty_weights():
        for expert in ("high", "low")[: definition.experts]:
            config = transformer_class.load_config(weights_dir, subfolder=TRANSFORMER_SUBFOLDERS[expert])
            transformer = transformer_class.from_config(config)
            blocks = transformer_blocks(transformer)
            blocks_count = max(blocks_count, len(blocks))
            whole = module_bytes(transformer, transformer_dtype)
            native_blocks = [module_bytes(block, transformer_dtype) for block in blocks]
            rest = max(rest, whole - sum(native_blocks))  # the non-block layers keep their dtype in every format
            largest_block["native"] = max([largest_block["native"], *native_blocks])
            for name in weights:
                block_bytes = [_block_bytes(block, transformer_dtype, name) for block in blocks]
                experts[name][expert] = whole - sum(native_blocks) + sum(block_bytes)
                largest_block[name] = max([largest_block[name], *block_bytes])
            model_dim = max(
                model_dim, int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
            )
            patch_size = tuple(int(value) for value in transformer.config.patch_size)
        text_encoder = UMT5EncoderModel(AutoConfig.from_pretrained(weights_dir / "text_encoder"))
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(weights_dir, subfolder="vae"))
        image_encoder = (
            CLIPVisionModel(AutoConfig.from_pretrained(weights_dir / "image_encoder"))
            if definition.spec.clip_image_encoder
            else None
        )
    _tie(text_encoder)  # outside init_empty_weights, which re-creates every parameter assigned inside it
    return {
        name: ModelSizes(
            experts=experts[name],
            largest_block=largest_block[name],
            adapter_room=int(largest_block["native"] * RESIDENT_BLOCK_ADAPTER_SHARE),
            transformer_rest=rest,
            text_encoder=module_bytes(text_encoder, text_dtype),
            text_encoder_largest_layer=_largest_leaf(text_encoder, text_dtype),
            # CLIP runs in float32 on every device (Wan2GP.loading)
            image_encoder=module_bytes(image_encoder, torch.float32) if image_encoder is not None else 0,
            vae=module_bytes(vae, vae_dtype),
            vae_element_bytes=vae_dtype.itemsize,
            model_dim=model_dim,
            blocks=blocks_count,
            spatial_factor=int(vae.config.scale_factor_spatial),
            patch_size=patch_size,
        )
        for name in weights
    }


def _tie(model: torch.nn.Module) -> None:
    """Share the tensors transformers ties when it builds the model for real (on the meta device it leaves them
    apart): UMT5's token table is one 2 GB tensor, not two."""
    for target, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
        owner_name, _, attribute = target.rpartition(".")
        setattr(model.get_submodule(owner_name), attribute, model.get_parameter(source))


def component_devices(placement: Placement, device: torch.device) -> dict[str, torch.device]:
    """Where each component is loaded: on the device, or in host memory for the offloading hooks to take over."""
    host = torch.device("cpu")
    streamed = placement.kind == "stream_blocks"
    encoders_off = placement.kind != "resident"
    return {
        "transformer": host if streamed else device,
        "text_encoder": host if encoders_off else device,
        "image_encoder": host if encoders_off else device,
        "vae": device,
    }


def apply_placement(
    placement: Placement,
    device: torch.device,
    *,
    transformers: Mapping[str, torch.nn.Module],
    encoders: Iterable[torch.nn.Module | None],
    vae: AutoencoderKLWan,
) -> OffloadedParts:
    """Install the offloading hooks a placement needs on freshly loaded components (loaded where
    component_devices says), and the VAE's tiling. Returns what manages the offloaded parts: sync() it after adding
    or removing layers (LoRAs); release() it after the model is dropped."""
    pinned = PinnedHostMemory()
    use_stream = device.type == "cuda"  # diffusers' streams (and pinned host copies) need CUDA
    offload = dict(onload_device=device, offload_device=torch.device("cpu"), use_stream=use_stream)
    if placement.kind != "resident":
        for encoder in encoders:
            if encoder is not None:
                if use_stream:
                    pinned.adopt([encoder], type(encoder).__name__)
                apply_group_offloading(encoder, offload_type="leaf_level", record_stream=use_stream, **offload)
    streamed: list[StreamedTransformer] = []
    if placement.kind == "stream_blocks":
        for transformer in {id(module): module for module in transformers.values()}.values():
            streamed.append(
                StreamedTransformer(
                    transformer, device, placement.resident_blocks, pinned=pinned if use_stream else None
                )
            )
    if placement.vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return OffloadedParts(pinned, streamed)


class PinnedHostMemory:
    """The host copies of offloaded modules in one page-locked buffer per module, registered with CUDA in place.

    diffusers pins each tensor with `pin_memory()`, a copy through torch's pinned-memory cache, which rounds every
    block up to a power of two: measured on the H200, 63.9 GiB of A14B weights took 95.6 GiB of pinned memory and 85 s
    to load (bench/README.md, "Memory profiles"). Here each module's tensors are copied, one at a time, into one
    ordinary buffer that `cudaHostRegister` then page-locks as it is: the exact size, no second copy. diffusers sees
    the tensors as pinned and keeps them as its host copies. `release()` unregisters the buffers (before they are
    freed); a buffer that cannot be registered stays pageable (slower copies, same results) with one WARNING."""

    ALIGNMENT = 64  # bytes: every tensor starts aligned for any dtype and for vectorised copies

    def __init__(self) -> None:
        self._registered: list[torch.Tensor] = []

    @property
    def bytes(self) -> int:
        return sum(buffer.numel() for buffer in self._registered)

    def adopt(self, modules: Sequence[torch.nn.Module], name: str) -> None:
        """Page-lock the host tensors of `modules` (all of a module's tensors, or e.g. only its streamed blocks')."""
        buffer = consolidate(modules)
        if buffer is None:
            return
        cudart = torch.cuda.cudart()
        status = cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
        if status != cudart.cudaError.success:
            logger.warning(
                "could not page-lock {:.1f} GB of host memory for {} ({}): diffusers pins copies of it instead "
                "(at load for the encoders, at every transfer for streamed blocks: slower, same results)",
                buffer.numel() / 1e9,
                name,
                status,
            )
            return
        if not buffer.is_pinned():
            # torch must see it as pinned, or diffusers pins a second copy of every tensor next to it
            cudart.cudaHostUnregister(buffer.data_ptr())
            logger.warning(
                "registered host memory does not read as pinned to torch: diffusers pins copies of it instead "
                "(slower, same results)"
            )
            return
        self._registered.append(buffer)

    def release(self) -> None:
        cudart = torch.cuda.cudart() if self._registered else None
        for buffer in self._registered:
            cudart.cudaHostUnregister(buffer.data_ptr())
        self._registered = []


def consolidate(modules: Sequence[torch.nn.Module], alignment: int = PinnedHostMemory.ALIGNMENT) -> torch.Tensor | None:
    """Move the modules' host tensors into one new uint8 buffer, one tensor at a time (each original is freed as soon
    as it is copied), every tensor starting `alignment`-aligned; the buffer, or None when nothing is on the host.
    Shared tensors (tied weights) stay shared; a torchao 8-bit weight's inner tensors (its int8/float8 data and
    scales) move, the wrapper stays the module's parameter."""
    owners = {id(t): t for module in modules for t in (*module.parameters(), *module.buffers())}.values()
    # (owner, inner attribute or None for the tensor itself, the host tensor)
    parts = [
        (owner, name, inner)
        for owner in owners
        for name, inner in (inner_tensors(owner) if is_quantized(owner) else [(None, owner)])
        if inner.device.type == "cpu"
    ]
    if not parts:
        return None
    sizes = [-(-inner.numel() * inner.element_size() // alignment) * alignment for _, _, inner in parts]
    buffer = torch.empty(sum(sizes), dtype=torch.uint8)
    offset = 0
    for (owner, name, inner), size in zip(parts, sizes, strict=True):
        nbytes = inner.numel() * inner.element_size()
        view = buffer[offset : offset + nbytes].view(inner.dtype).view(inner.shape)
        view.copy_(inner.data)
        if name is None:
            owner.data = view
        else:
            setattr(owner, name, view)
        offset += size
    return buffer


class StreamedTransformer:
    """A transformer run with diffusers' block-level group offloading on a side stream (each block copied in while
    the one before computes), except `resident_blocks` of its blocks, spread evenly, which stay on the device: where
    the budget has room, fewer blocks cross the bus per forward. Its non-block layers (embedders, head) stay on the
    device too, instead of diffusers' copy in and out of them around every forward.

    diffusers' hooks keep a host copy of every tensor they move, listed when they are applied. Layers added or removed
    later (peft's LoRA layers) are taken in by `sync()`, which updates those lists in place; re-applying the hooks
    instead (diffusers' own answer) would forget the traced block order and copy the next forward in unprefetched."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        device: torch.device,
        resident_blocks: int,
        *,
        pinned: PinnedHostMemory | None,
    ):
        from diffusers.hooks import HookRegistry

        self.transformer = transformer
        self.device = device
        blocks = transformer_blocks(transformer)
        count = min(max(resident_blocks, 0), len(blocks))
        # evenly spaced, so every streamed block's copy has resident compute before it to hide behind
        chosen = {round(index * len(blocks) / count) for index in range(count)} if count else set()
        self.resident = [block for index, block in enumerate(blocks) if index in chosen]
        resident_ids = {id(block) for block in self.resident}
        streamed_blocks = [block for block in blocks if id(block) not in resident_ids]
        use_stream = pinned is not None
        if pinned is not None:  # only the streamed blocks' host copies are page-locked: the rest leaves the host
            pinned.adopt(streamed_blocks, type(transformer).__name__)
        apply_group_offloading(
            transformer,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=use_stream,
            record_stream=use_stream,
            # the host copies are the tensors themselves (page-locked above), not pinned copies of them
            low_cpu_mem_usage=True,
        )
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        lazy_hook = registry.get_hook("lazy_prefetch_group_offloading")
        top = registry.get_hook("group_offloading")
        if top is not None:  # the non-block layers: on the device for good (offloading to the device is a no-op)
            top.group.offload_device = device
            top.group.onload_()
        names = {id(module): name for name, module in transformer.named_modules()}
        for block in self.resident:
            block_registry = HookRegistry.check_if_exists_or_initialize(block)
            block_registry.remove_hook("group_offloading", recurse=False)
            block_registry.remove_hook("layer_execution_tracker", recurse=False)
            if lazy_hook is not None:  # not expected in the traced order
                lazy_hook._layer_execution_tracker_module_names.discard(names[id(block)])
        self._streamed_groups = [
            HookRegistry.check_if_exists_or_initialize(block).get_hook("group_offloading").group
            for block in streamed_blocks
        ]
        self.sync()

    def sync(self) -> None:
        """Take in tensors added to or removed from the blocks since the hooks were applied: a streamed block's new
        tensors get (small, pinned) host copies in its group and live there between forwards, removed ones are
        forgotten; a resident block's tensors all go to the device. Between generations (all blocks offloaded)."""
        for group in self._streamed_groups:
            if group.stream is None:
                continue  # no stream (a CPU): the group moves its modules whole with .to(), no host copies kept
            current = {id(t): t for module in group.modules for t in (*module.parameters(), *module.buffers())}
            for tensor in [t for t in group.cpu_param_dict if id(t) not in current]:
                del group.cpu_param_dict[tensor]
            for tensor in current.values():
                if is_quantized(tensor) and tensor in group.cpu_param_dict:
                    _keep_quantized_host_copy(tensor, group.cpu_param_dict)
                if tensor not in group.cpu_param_dict:
                    host = tensor.data.to("cpu")
                    host = host if host.is_pinned() else host.pin_memory()
                    group.cpu_param_dict[tensor] = host
                    tensor.data = host
        for block in self.resident:
            block.to(self.device)  # Module.to also moves torchao's 8-bit weights (tensor.data would not)


def _keep_quantized_host_copy(weight: torch.Tensor, host_copies: dict[torch.Tensor, torch.Tensor]) -> None:
    """diffusers' group offloading and torchao's 8-bit weights, two gaps (H200, diffusers 0.42.1, torchao 0.18):

    - the host copy of a weight already on the host is the weight itself (`.cpu()` returns it), and every onload
      swaps the device copy into that object, so the host copy would become the device copy: a second wrapper over
      the same (page-locked) inner tensors is the host copy instead;
    - offloading puts the host copy's inner tensors back into the weight but leaves its wrapper saying it is on the
      device, and the next code reading the weight between forwards fails ("Attempted to set the storage of a tensor
      on device cpu to a storage on different device cuda:0": peft attaching a LoRA): a wrapper whose data is on the
      host is made to say so."""
    host = host_copies[weight]
    if host is weight:
        host = host_copies[weight] = host._apply_fn_to_data(lambda inner: inner)
    data_device = next(inner for _, inner in inner_tensors(weight)).device
    if data_device == host.device and weight.device != host.device:
        torch.utils.swap_tensors(weight, host._apply_fn_to_data(lambda inner: inner))


@dataclass
class OffloadedParts:
    """What apply_placement set up: the page-locked host memory and the streamed transformers."""

    pinned: PinnedHostMemory
    streamed: list[StreamedTransformer]

    def sync(self) -> None:
        for transformer in self.streamed:
            transformer.sync()

    def release(self) -> None:
        self.streamed = []
        self.pinned.release()
