"""Where a model's parts live while it generates, chosen from a VRAM budget. Pure Python: bytes in, a Placement out.

Three placements, from fastest to leanest (``Wan2GP.offload`` applies them with diffusers' group offloading):

- ``resident``: every component on the device for the model's lifetime (the only choice on a CPU).
- ``offload_encoders``: the transformers stay on the device; the text encoder (and Wan 2.1's CLIP tower) wait in
  pinned host memory and come over layer by layer while they encode, once per generation.
- ``stream_blocks``: the encoders as above, and each transformer's blocks stream from pinned host memory one block
  ahead of the compute on a side stream; the device holds a transformer's non-block layers, two blocks and the
  activations. The expert not in use costs no device memory at all, and switching experts reloads nothing from disk.

The VAE always stays on the device (a few hundred MB); it decodes (and encodes) in tiles when the whole video's
activations would not fit beside the rest.

The offloaded parts wait in page-locked host memory, so a placement also needs host memory (`host_bytes`). When no
placement of the 16-bit weights fits both the VRAM budget and the host memory, the same placements are tried with
the transformers' block weights in 8 bits (Wan2GP.quantization): half the bytes on the device and on the host.

The activation figures are estimates calibrated on an H200 (bench/README.md, "Memory profiles"): what a placement
needs is weights that must be on the device at once + the largest working set of the three stages (encode, denoise,
decode) + a fixed allocator margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GiB = 2**30

PLACEMENTS = ("resident", "offload_encoders", "stream_blocks")

# Kept free on top of every estimate: the CUDA context's own allocations, the caching allocator's fragmentation.
ALLOCATOR_MARGIN_BYTES = GiB
# Blocks a streamed transformer holds at once: the one computing and the one being copied in beside it.
STREAMED_BLOCKS_ON_DEVICE = 2
# Denoising activations per token per model-dimension unit (bf16), measured: 3.5 GiB over the resident weights at
# 32,760 tokens for the A14B's dim 5120 (bench/README.md), i.e. ~11.2 bytes per token per unit of dim; rounded up.
DENOISE_BYTES_PER_TOKEN_DIM = 12
# Wan VAE decode (float32): peak bytes per output pixel of one frame (it decodes causally, a few frames at a time, so
# the peak follows the frame size, not the length). Measured on the H200: 9.6 GiB over the VAE's weights at 768x576
# (22.7 KiB per pixel; bench/README.md, "Memory profiles"), rounded up. A 16-bit VAE's peak is about half: 4.32 GiB
# in fp16 or bf16 against 8.29 in fp32 on the H200 (bench/results/vae_chunks_h200.json), so it scales with the VAE's
# element size. With the GPU's VAE layers (Wan2GP.vae_layers) the fp16 peak was 4.94 GiB, then 3.77 GiB once they
# stopped copying padded inputs, under this estimate's 5.06.
VAE_DECODE_BYTES_PER_PIXEL = 24 * 1024
# Room for the unmerged LoRA adapters beside a resident block, as a share of the block's 16-bit bytes (two rank-64
# LoRAs on every Linear add ~4% to an A14B block; the adapters stay 16-bit when the block's weights are 8-bit).
RESIDENT_BLOCK_ADAPTER_SHARE = 0.05
# Tiled decode/encode works on tiles of at most this many pixels a side (diffusers' AutoencoderKLWan tiling default
# sample tile, 256, plus its blend overlap).
VAE_TILE_PIXELS = 320 * 320


class VramBudgetTooSmall(ValueError):
    """No placement fits the budget; `minimum` is the smallest budget (bytes) with which the leanest one does."""

    def __init__(self, budget: int, minimum: int, model: str, leanest: str = "stream_blocks, tiled VAE") -> None:
        self.budget = budget
        self.minimum = minimum
        super().__init__(
            f"vram budget: {budget / GiB:.1f} GiB is too small for {model} at this size; the leanest placement "
            f"({leanest}) needs at least {minimum / GiB:.1f} GiB"
        )


class HostMemoryTooSmall(ValueError):
    """Placements fit the VRAM budget but none of them the host memory their offloaded parts wait in; `minimum` is
    the least host memory (bytes) one of them needs."""

    def __init__(self, available: int, minimum: int, model: str) -> None:
        self.available = available
        self.minimum = minimum
        super().__init__(
            f"host memory: {available / GiB:.1f} GiB available is too little for {model} within this vram budget; "
            f"the placement that needs least host memory needs {minimum / GiB:.1f} GiB"
        )


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each component at the dtype it runs in."""

    experts: Mapping[str, int]  # whole transformer per expert ("high", and "low" for two-expert models)
    largest_block: int  # the largest transformer block (what streaming holds per block on the device)
    adapter_room: int  # bytes kept beside each resident block for unmerged LoRA adapters (RESIDENT_BLOCK_ADAPTER_SHARE)
    transformer_rest: int  # the largest transformer's layers outside its blocks (embedders, head)
    text_encoder: int
    text_encoder_largest_layer: int  # the largest single layer (UMT5's token embedding): what streaming it needs
    image_encoder: int  # 0 when the architecture has no CLIP tower
    vae: int
    vae_element_bytes: int  # 4 for a float32 VAE, 2 for a 16-bit one (the decode's activations scale with it)
    model_dim: int  # the transformer's hidden size (activations scale with it)
    blocks: int  # blocks per transformer (streamable one by one)
    spatial_factor: int  # pixels per latent pixel (the VAE's)
    patch_size: tuple[int, int, int]  # the transformer's (frames, rows, columns) per token

    def work_for(self, *, latent_frames: int, width: int, height: int) -> WorkSizes:
        """One generation's geometry: its token count is latent frames x latent rows x latent columns / patch."""
        frames, rows, columns = self.patch_size
        tokens = (
            (latent_frames // frames)
            * (height // self.spatial_factor // rows)
            * (width // self.spatial_factor // columns)
        )
        return WorkSizes(tokens=tokens, width=width, height=height)


@dataclass(frozen=True)
class WorkSizes:
    """The geometry of one generation, as the activation estimates need it."""

    tokens: int  # transformer tokens: latent frames x (h / 2) x (w / 2)
    width: int
    height: int

    def denoise_bytes(self, sizes: ModelSizes) -> int:
        return self.tokens * sizes.model_dim * DENOISE_BYTES_PER_TOKEN_DIM

    def decode_bytes(self, sizes: ModelSizes, *, tiled: bool) -> int:
        pixels = min(self.width * self.height, VAE_TILE_PIXELS) if tiled else self.width * self.height
        return pixels * VAE_DECODE_BYTES_PER_PIXEL * sizes.vae_element_bytes // 4


@dataclass(frozen=True)
class Placement:
    kind: str  # one of PLACEMENTS
    vae_tiling: bool
    needed: int  # estimated peak device bytes under this placement
    budget: int | None  # None: no budget (CPU, or a forced placement without one)
    resident_blocks: int = 0  # stream_blocks: blocks of each transformer kept on the device (the budget's spare room)
    weights: str = "native"  # the transformers' block weights: "native" (the definition's dtype), "int8" or "fp8"
    host_needed: int = 0  # estimated host bytes of the offloaded parts

    def describe(self) -> str:
        budget = "no budget" if self.budget is None else f"budget {self.budget / GiB:.1f} GiB"
        weights = f", {self.weights} transformer weights" if self.weights != "native" else ""
        tiling = ", tiled VAE" if self.vae_tiling else ""
        resident = f", {self.resident_blocks} blocks per transformer resident" if self.resident_blocks else ""
        host = f", ~{self.host_needed / GiB:.1f} GiB of host memory" if self.host_needed else ""
        return f"{self.kind}{weights}{tiling}{resident} (needs ~{self.needed / GiB:.1f} GiB, {budget}{host})"

    def needed_for(self, sizes: ModelSizes, work: WorkSizes) -> int:
        """Estimated peak device bytes of a generation of `work` under this placement."""
        return needed_bytes(self.kind, sizes, work, vae_tiling=self.vae_tiling, resident_blocks=self.resident_blocks)


def needed_bytes(kind: str, sizes: ModelSizes, work: WorkSizes, *, vae_tiling: bool, resident_blocks: int = 0) -> int:
    """Estimated peak device bytes of a generation under `kind` (stream_blocks: with `resident_blocks` of each
    transformer kept on the device)."""
    if kind not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {kind!r}")
    encoders = sizes.text_encoder + sizes.image_encoder
    transformers = sum(sizes.experts.values())
    if kind == "resident":
        weights = transformers + encoders + sizes.vae
        encode_peak = 0
    elif kind == "offload_encoders":
        weights = transformers + sizes.vae
        encode_peak = sizes.text_encoder_largest_layer
    else:
        weights = sizes.vae + sizes.transformer_rest + STREAMED_BLOCKS_ON_DEVICE * sizes.largest_block
        weights += resident_blocks * block_cost(sizes)
        encode_peak = sizes.text_encoder_largest_layer
    working = max(encode_peak, work.denoise_bytes(sizes), work.decode_bytes(sizes, tiled=vae_tiling))
    return weights + working + ALLOCATOR_MARGIN_BYTES


def host_bytes(kind: str, sizes: ModelSizes, *, resident_blocks: int = 0) -> int:
    """Estimated host bytes of what `kind` offloads: the encoders, and under stream_blocks every transformer's
    streamed blocks (the resident ones live on the device only)."""
    if kind == "resident":
        return 0
    offloaded = sizes.text_encoder + sizes.image_encoder
    if kind == "stream_blocks":
        on_device = len(sizes.experts) * (sizes.transformer_rest + resident_blocks * sizes.largest_block)
        offloaded += max(0, sum(sizes.experts.values()) - on_device)
    return offloaded


def plan_placement(
    sizes: ModelSizes,
    work: WorkSizes,
    budget: int | None,
    *,
    model: str,
    forced: str | None = None,
    weights: str = "native",
    host_budget: int | None = None,
    fallback: tuple[str, ModelSizes] | None = None,
) -> Placement:
    """The fastest placement that fits `budget` (device bytes) and `host_budget` (host bytes for the offloaded
    parts; None: no limit), untiled VAE before tiled, with the transformers' weights `weights` (of `sizes`); when
    none does, the same search with `fallback` (8-bit weights: their name and sizes). `forced` names a placement to
    use whatever it needs (tests, benchmarks). No budget: resident. VramBudgetTooSmall when nothing fits the budget,
    HostMemoryTooSmall when something does but not in host memory."""

    def placed(kind: str, tiling: bool, option: ModelSizes, label: str) -> Placement:
        """`kind` with the budget's spare room (if any) given to resident blocks when it streams them."""
        spare = None if budget is None else budget - needed_bytes(kind, option, work, vae_tiling=tiling)
        resident = resident_blocks(option, spare) if kind == "stream_blocks" and spare is not None else 0
        needed = needed_bytes(kind, option, work, vae_tiling=tiling, resident_blocks=resident)
        host = host_bytes(kind, option, resident_blocks=resident)
        return Placement(kind, tiling, needed, budget, resident, label, host)

    if forced is not None:
        if forced not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {forced!r}")
        tiling = budget is not None and needed_bytes(forced, sizes, work, vae_tiling=False) > budget
        return placed(forced, tiling, sizes, weights)
    if budget is None:
        return placed("resident", False, sizes, weights)
    options = [(weights, sizes), *([fallback] if fallback is not None else [])]
    host_short: list[Placement] = []
    for label, option in options:
        for kind in PLACEMENTS:
            for tiling in (False, True):
                if needed_bytes(kind, option, work, vae_tiling=tiling) > budget:
                    continue
                placement = placed(kind, tiling, option, label)
                if host_budget is None or placement.host_needed <= host_budget:
                    return placement
                host_short.append(placement)
    if host_short:
        assert host_budget is not None
        raise HostMemoryTooSmall(host_budget, min(p.host_needed for p in host_short), model)
    label, leanest = options[-1]
    minimum = needed_bytes(PLACEMENTS[-1], leanest, work, vae_tiling=True)
    described = "stream_blocks, tiled VAE" + (f", {label} transformer weights" if label != "native" else "")
    raise VramBudgetTooSmall(budget, minimum, model, described)


def block_cost(sizes: ModelSizes) -> int:
    """Device bytes of keeping one more block of every transformer resident."""
    return len(sizes.experts) * (sizes.largest_block + sizes.adapter_room)


def resident_blocks(sizes: ModelSizes, spare: int) -> int:
    """How many blocks of each transformer the spare room of a budget keeps on the device (fewer bytes cross the bus
    per forward), at most all of them."""
    return max(0, min(sizes.blocks, spare // block_cost(sizes)))


def parse_budget_gb(value: float | str | None) -> int | None:
    """`--vram-budget` in GB (GiB, as the cards are sold: a "24 GB" card has 24 GiB) -> bytes; None stays None."""
    if value is None or value == "":
        return None
    try:
        gigabytes = float(value)
    except ValueError:
        raise ValueError(f"vram budget: expected a number of GB, e.g. 24, got {value!r}") from None
    if not 1.0 <= gigabytes <= 4096.0:
        raise ValueError(f"vram budget: expected between 1 and 4096 GB, got {value!r}")
    return int(gigabytes * GiB)
