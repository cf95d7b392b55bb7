"""Wan2GP.vae_layers: the VAE's causal convolutions, RMS norms and upsamplers with the engine's GPU forwards give
diffusers' own results, on the CPU, in fp32 (to rounding) and laid out as the engine lays them out on a GPU.

The VAEs are small random ones built from a seed with diffusers' AutoencoderKLWan, in the two architectures the
bundled models use: Wan 2.1's (2.2 A14B's too) and Wan 2.2 5B's residual one with 2x2 pixel patches. Residual blocks,
the mid block's attention, the temporal down- and upsamplings (a stride-2 causal convolution in the encoder, the
time_conv's "Rep" first chunk in the decoder) and every cache path run, over more chunks than the cache holds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanCausalConv3d,
    WanResidualBlock,
    WanRMS_norm,
    WanUpsample,
)
from torch.utils._python_dispatch import TorchDispatchMode

from Wan2GP.conditioning import VaeCodec
from Wan2GP.vae_layers import (
    ChannelRMSNorm,
    FramewiseCausalConv3d,
    FusedResidualBlock,
    NativeDtypeUpsample,
    convolutions_channels_last,
    prepare_for_gpu,
    use_fast_layers,
)

STATISTICS = dict(z_dim=4, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 0.8, 1.2, 1.0])
ARCHITECTURES = {
    "wan21": dict(
        base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True], **STATISTICS
    ),
    "wan22_5b": dict(
        base_dim=8,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        **STATISTICS,
    ),
}


def _random_vae(architecture: str) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**ARCHITECTURES[architecture]).eval().requires_grad_(False)
    with torch.no_grad():  # gammas and biases away from their 1 and 0, so a norm that drops them shows
        for name, parameter in vae.named_parameters():
            if name.endswith(("gamma", "bias")):
                parameter.uniform_(0.5, 1.5)
    return vae


def _rel(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc", "ndhwc_compiled"])
def test_the_fast_layers_decode_and_encode_as_diffusers(architecture: str, layout: str) -> None:
    """ndhwc: what the engine does on a GPU (channels-last weights, the fast forwards); compiled: with --compile,
    the residual blocks' norm-and-SiLU through torch.compile (dynamo's eager backend here: the graph it captures
    with dynamic shapes, every block and chunk size through one function)."""
    stock = _random_vae(architecture)
    fast = copy.deepcopy(stock)
    if layout == "ncdhw":
        use_fast_layers(fast)
    else:
        prepare_for_gpu(fast, compile_backend="eager" if layout == "ndhwc_compiled" else None)
    codec, reference = VaeCodec(fast), VaeCodec(stock)
    latent_frames = 5  # the first chunk, then 4 more: past the 2 frames each cache holds
    spatial = reference.spatial_factor
    latents = torch.randn(
        (1, 4, latent_frames, 64 // spatial, 96 // spatial), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        pixels, expected_pixels = codec.decode(latents), reference.decode(latents)
        encoded, expected_latents = codec.encode(expected_pixels), reference.encode(expected_pixels)
    assert pixels.shape == expected_pixels.shape == (3, 4 * (latent_frames - 1) + 1, 64, 96)
    assert _rel(pixels, expected_pixels) < 1e-5
    assert encoded.shape == expected_latents.shape
    assert _rel(encoded, expected_latents) < 1e-5
    # the same parameters and state-dict keys: only the forwards changed
    assert fast.state_dict().keys() == stock.state_dict().keys()


def test_the_compiled_block_functions_fix_the_channels_and_leave_the_positions_symbolic() -> None:
    """The residual blocks' compiled functions (the norm-and-SiLU, with and without the bias it takes over, and the
    output add): a graph per function and channel count, each with the channel count a constant (inductor then keeps
    a row in registers: one read of the tensor, not two) and the positions symbolic (every chunk and size through the
    same graph)."""
    graphs: list[tuple[tuple[object, ...], ...]] = []

    def recording_backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
        traced = [node.meta["example_value"] for node in graph.graph.nodes if node.op == "placeholder"]
        graphs.append(tuple(tuple(value.shape) for value in traced if isinstance(value, torch.Tensor)))
        return graph.forward

    torch._dynamo.reset()
    vae = _random_vae("wan21")
    prepare_for_gpu(vae, compile_backend=recording_backend)
    blocks = [block for block in vae.modules() if isinstance(block, FusedResidualBlock)]
    latents = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        pixels = VaeCodec(vae).decode(latents)
        VaeCodec(vae).encode(pixels)
    rows = [shape for shapes in graphs for shape in shapes if len(shape) == 2]
    vectors = [shape for shapes in graphs for shape in shapes if len(shape) == 1]
    assert rows and vectors, graphs
    assert all(isinstance(positions, torch.SymInt) for positions, _ in rows), graphs
    assert all(isinstance(channels, int) for _, channels in rows), graphs
    assert all(isinstance(channels, int) for (channels,) in vectors), graphs
    # norm1 and norm2 take the blocks' in and out channels, the output add their out channels
    expected = {block.conv1.in_channels for block in blocks} | {block.conv1.out_channels for block in blocks}
    assert {channels for _, channels in rows} == expected, graphs
    # with and without a bias, and the output add: no more graphs than functions x channel counts
    assert len(graphs) <= 3 * len(expected), graphs
    torch._dynamo.reset()


def test_use_fast_layers_switches_every_convolution_norm_upsampler_and_residual_block() -> None:
    vae = _random_vae("wan21")
    kinds = (WanCausalConv3d, WanRMS_norm, WanUpsample, WanResidualBlock)
    expected = sum(type(module) in kinds for module in vae.modules())
    assert use_fast_layers(vae) == expected > 0
    assert not any(type(module) in kinds for module in vae.modules())
    assert any(isinstance(module, FramewiseCausalConv3d) for module in vae.modules())
    assert any(isinstance(module, ChannelRMSNorm) for module in vae.modules())
    assert any(isinstance(module, NativeDtypeUpsample) for module in vae.modules())
    assert any(isinstance(module, FusedResidualBlock) for module in vae.modules())
    assert use_fast_layers(vae) == 0, "a second call finds nothing left to switch"


def test_prepare_for_gpu_keeps_diffusers_layers_for_the_stock_pipeline() -> None:
    vae = _random_vae("wan21")
    prepare_for_gpu(vae, stock_layers=True)
    assert not any(isinstance(module, FramewiseCausalConv3d | ChannelRMSNorm) for module in vae.modules())
    five_d = [p for p in vae.parameters() if p.dim() == 5]
    assert five_d and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five_d)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cached", [0, 1, 2])
@pytest.mark.parametrize("frames", [1, 4])
def test_a_framewise_causal_convolution_is_diffusers_3d_one(stride: int, cached: int, frames: int) -> None:
    """Each temporal kernel the VAE has (3x3x3 padded, 3x1x1 padded, 3x1x1 stride 2 unpadded, 1x1x1) with 0, 1 or
    2 cached frames, over one frame (the decoder's first chunk, fewer frames than the padding) or 4: the same frames
    out, in the same order, with the bias once."""
    torch.manual_seed(2)
    shapes = [((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (1, 0, 0)), ((1, 1, 1), (0, 0, 0))]
    if stride == 2:
        shapes = [((3, 1, 1), (0, 0, 0))]
        frames = max(frames, 3)  # unpadded: a stride-2 tap needs 3 frames
    for kernel, padding in shapes:
        stock = WanCausalConv3d(6, 5, kernel, stride=(stride, 1, 1), padding=padding).requires_grad_(False)
        stock.bias.uniform_(0.5, 1.5)
        fast = copy.deepcopy(stock)
        fast.__class__ = FramewiseCausalConv3d
        x = torch.randn(1, 6, frames, 7, 9)
        cache = torch.randn(1, 6, cached, 7, 9) if cached else None
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            convolutions_channels_last(fast) if layout == torch.channels_last_3d else None
            given = x.contiguous(memory_format=layout)
            expected = stock(x, cache)
            out = fast(given, None if cache is None else cache.contiguous(memory_format=layout))
            assert out.shape == expected.shape, (kernel, layout)
            assert _rel(out, expected) < 1e-6, (kernel, layout)


class _CopiesSeen(TorchDispatchMode):
    """The aten ops that copy: a concatenation or a constant pad (a padded input), a clone or a copy (a weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        copies = (torch.ops.aten.cat, torch.ops.aten.constant_pad_nd, torch.ops.aten.clone, torch.ops.aten.copy_)
        if func.overloadpacket in copies:
            self.seen.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_a_padded_causal_convolution_copies_neither_its_input_nor_its_weight() -> None:
    """The 3x3x3 and 3x1x1 convolutions with "same" causal padding (all of the decoder's and most of the encoder's)
    read x and the cached frames where they lie: no concatenation, no pad (at 768x576 each was a copy of every input,
    its size); laid out as the engine lays them out on a GPU, each tap's weight is a channels-last slice, not a copy
    made on every call."""
    for kernel, padding in (((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (1, 0, 0))):
        conv = WanCausalConv3d(6, 5, kernel, padding=padding).requires_grad_(False)
        convolutions_channels_last(conv)
        assert use_fast_layers(conv) == 1 and isinstance(conv, FramewiseCausalConv3d)
        x = torch.randn(1, 6, 4, 7, 9).contiguous(memory_format=torch.channels_last_3d)
        for cache in (None, x[:, :, -1:].clone(), x[:, :, -2:].clone()):
            with _CopiesSeen() as copies:
                conv(x, cache)
            assert copies.seen == [], (kernel, None if cache is None else cache.shape[2])


def test_the_fused_rms_norm_is_diffusers_norm_with_one_rounding() -> None:
    torch.manual_seed(3)
    for images, channel_first, bias in ((False, True, False), (True, True, True), (False, False, True)):
        stock = WanRMS_norm(24, channel_first=channel_first, images=images, bias=bias).requires_grad_(False)
        stock.gamma.uniform_(0.5, 1.5)
        if bias:
            stock.bias.uniform_(-0.5, 0.5)
        fast = copy.deepcopy(stock)
        fast.__class__ = ChannelRMSNorm
        shape = (2, 24, 5, 6) if images else (1, 24, 3, 5, 6)
        if not channel_first:
            shape = (2, 7, 24)
        x = torch.randn(shape) * 3
        assert _rel(fast(x), stock(x)) < 1e-6
        # in fp16 it is at least as close to the fp32 result as diffusers' (which rounds after the norm, the scale and
        # gamma each)
        half_stock, half_fast = copy.deepcopy(stock).half(), copy.deepcopy(fast).half()
        exact = stock(x.half().float())
        assert _rel(half_fast(x.half()).float(), exact) <= _rel(half_stock(x.half()).float(), exact) * 1.05
    zeros = torch.zeros(1, 24, 2, 3, 3)
    assert torch.equal(fast_norm_of(zeros), torch.zeros_like(zeros)), "an all-zero position stays zero, not NaN"


def fast_norm_of(x: torch.Tensor) -> torch.Tensor:
    norm = WanRMS_norm(x.shape[1], images=False)
    norm.__class__ = ChannelRMSNorm
    with torch.no_grad():
        return norm(x)


def test_native_dtype_upsampling_copies_the_same_values() -> None:
    stock = WanUpsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    fast = copy.deepcopy(stock)
    fast.__class__ = NativeDtypeUpsample
    x = torch.randn(3, 4, 5, 7).to(torch.bfloat16)
    out = fast(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, stock(x))


@pytest.mark.parametrize("compiled", [False, True])
def test_the_fast_layers_decode_and_encode_tiled_as_diffusers(compiled: bool) -> None:
    """The placements that tile the VAE (a 24 or 48 GB card) run the same modules through diffusers' tiled loops, with
    --compile too (tiles of several sizes through the same graphs)."""
    stock = _random_vae("wan21")
    fast = copy.deepcopy(stock)
    prepare_for_gpu(fast, compile_backend="eager" if compiled else None)
    tiles = dict(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48)
    for vae in (stock, fast):
        vae.enable_tiling(**tiles, tile_sample_stride_width=48)
    latents = torch.randn((1, 4, 3, 12, 16), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        pixels, expected_pixels = VaeCodec(fast).decode(latents), VaeCodec(stock).decode(latents)
        encoded, expected_latents = VaeCodec(fast).encode(expected_pixels), VaeCodec(stock).encode(expected_pixels)
    assert pixels.shape == expected_pixels.shape == (3, 9, 96, 128)
    assert _rel(pixels, expected_pixels) < 1e-5
    assert _rel(encoded, expected_latents) < 1e-5
