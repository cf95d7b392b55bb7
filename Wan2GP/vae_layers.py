"""Faster forwards for the Wan VAE's layers, the same parameters and the same arithmetic up to rounding.

At 768x576x53 the fp16 VAE's decode took 1.21 s on an H200 for 199 TFLOP of convolutions: 0.46 s in cuDNN's 3-D
convolution kernels and the rest in memory-bound passes around them (bench/README.md, `vae_convs.py`). Four modules
cause most of those passes:

- `WanCausalConv3d` pads each input with a copy (`F.pad`) before a 3-D convolution. `FramewiseCausalConv3d` runs it
  as kt 2-D convolutions over time-shifted frames (the frames are the batch: views of an NDHWC input, so no copy),
  summed, with the spatial padding done inside the convolution. cuDNN's 2-D kernels were also faster than its 3-D
  ones at the decoder's sizes (96 channels at full resolution: 2.73 ms against 4.56 ms).
- `WanRMS_norm` upcasts to fp32, normalizes, casts back, then scales, multiplies by gamma and adds a zero bias: six
  passes over the tensor. `ChannelRMSNorm` is one fused `rms_norm` over the channels (fp32 inside, as diffusers), which
  equals F.normalize(x) * sqrt(C): x / rms(x) is x / |x| * sqrt(C).
- `WanUpsample` upsamples a copy in fp32 and casts it back; nearest-neighbour upsampling only copies values, so
  `NativeDtypeUpsample` does it in the input's dtype, bit for bit the same result.
- `WanResidualBlock` runs each norm and its SiLU as two passes; `FusedResidualBlock` runs them as one function,
  which the worker's --compile compiles into one kernel, and keeps its tensors channels-last.

`use_fast_layers(vae)` switches a loaded VAE's modules to these forwards in place (the modules keep their parameters,
state-dict keys and hooks; only the class, which carries the forward, changes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    CACHE_T,
    WanCausalConv3d,
    WanResidualBlock,
    WanRMS_norm,
    WanUpsample,
)

# rms_norm's eps only keeps an all-zero position from dividing by zero (its output stays 0, as F.normalize's, whose
# floor of 1e-12 on |x| makes a difference only below it).
_EPS = torch.finfo(torch.float32).tiny


class FramewiseCausalConv3d(WanCausalConv3d):
    """A causal 3-D convolution as a sum of 2-D convolutions, one per temporal tap, over the frames as a batch."""

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        x = causal_time_padding(self, x, cache_x)
        taps, stride = self.kernel_size[0], self.stride[0]
        out_frames = (x.shape[2] - taps) // stride + 1
        span = stride * (out_frames - 1) + 1
        padding = (self._padding[2], self._padding[0])
        out = None
        for tap in range(taps):
            weight = self.weight[:, :, tap]
            if x.is_contiguous(memory_format=torch.channels_last_3d):
                weight = weight.contiguous(memory_format=torch.channels_last)
            frames = frames_as_batch(x[:, :, tap : tap + span : stride])
            term = F.conv2d(frames, weight, self.bias if tap == 0 else None, self.stride[1:], padding)
            out = term if out is None else out.add_(term)
        assert out is not None  # a kernel has at least one tap
        return batch_as_frames(out, x.shape[0])


class ChannelRMSNorm(WanRMS_norm):
    """WanRMS_norm in one fused kernel: rms_norm over the channel dimension, moved last (a view for channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_dim = 1 if self.channel_first else x.dim() - 1
        channels = x.shape[channel_dim]
        last = x.movedim(channel_dim, -1)
        weight = self.gamma.reshape(channels)
        normalized = F.rms_norm(last, (channels,), weight.to(x.dtype), eps=_EPS)
        if isinstance(self.bias, torch.Tensor):
            normalized = normalized + self.bias.reshape(channels).to(x.dtype)
        return normalized.movedim(-1, channel_dim)


class NativeDtypeUpsample(WanUpsample):
    """Nearest-neighbour upsampling in the input's own dtype (it copies values, so no rounding to avoid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.Upsample.forward(self, x)


def rms_norm_silu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SiLU(rms_norm(x) * weight) over x's last dimension: a residual block's norm and activation."""
    return F.silu(F.rms_norm(x, (x.shape[-1],), weight, eps=_EPS))


class FusedResidualBlock(WanResidualBlock):
    """WanResidualBlock with each norm and its SiLU as one function of the channels-last tensor (`norm_silu`:
    rms_norm_silu, or its torch.compile'd kernel, one pass instead of two) and the shortcut added in place. In a VAE
    laid out channels-last it takes its input channels-last (diffusers' temporal upsampling hands it an NCDHW tensor),
    so that its norms, convolutions and add all see one layout."""

    norm_silu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = staticmethod(rms_norm_silu)

    def forward(
        self, x: torch.Tensor, feat_cache: list | None = None, feat_idx: list[int] | None = None
    ) -> torch.Tensor:
        feat_idx = feat_idx if feat_idx is not None else [0]
        channels_last = self.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        if channels_last and not x.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        shortcut = self.conv_shortcut(x)
        x = self._causal(self.conv1, self._norm_silu(self.norm1, x), feat_cache, feat_idx)
        x = self._causal(self.conv2, self.dropout(self._norm_silu(self.norm2, x)), feat_cache, feat_idx)
        return x.add_(shortcut)

    def _norm_silu(self, norm: WanRMS_norm, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight = norm.gamma.reshape(channels).to(x.dtype)
        return self.norm_silu(x.movedim(1, -1), weight).movedim(-1, 1)

    @staticmethod
    def _causal(conv: WanCausalConv3d, x: torch.Tensor, feat_cache: list | None, feat_idx: list[int]) -> torch.Tensor:
        """conv(x) with diffusers' cache protocol: the conv gets the frames cached by the last chunk, and the cache
        keeps this chunk's last CACHE_T frames (topped up from the old cache when the chunk is shorter)."""
        if feat_cache is None:
            return conv(x)
        index = feat_idx[0]
        kept = x[:, :, -CACHE_T:].clone()
        if kept.shape[2] < CACHE_T and feat_cache[index] is not None:
            kept = torch.cat([feat_cache[index][:, :, -1:].to(kept.device), kept], dim=2)
        out = conv(x, feat_cache[index])
        feat_cache[index] = kept
        feat_idx[0] += 1
        return out


_FAST_FORWARDS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    WanCausalConv3d: FramewiseCausalConv3d,
    WanRMS_norm: ChannelRMSNorm,
    WanUpsample: NativeDtypeUpsample,
    WanResidualBlock: FusedResidualBlock,
}


def convolutions_channels_last(vae: torch.nn.Module) -> None:
    """The VAE's convolution weights channels-last (NDHWC, NHWC), so cuDNN runs its tensor-core kernels and their
    outputs stay channels-last: the seed segment's fp32 decode on an H200 took 1.90 s instead of 2.02 s, 8e-4 from the
    NCDHW one (bench/README.md). A 2-D convolution's output takes its weight's layout, so the resamplers' 2-D
    convolutions bring an NCHW input (diffusers' temporal upsampling makes one) back to channels-last.
    Module.to(memory_format=...) would refuse the parameters that are not 4- or 5-D."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


def prepare_for_gpu(vae: torch.nn.Module, *, stock_layers: bool = False, compile_backend: str | None = None) -> None:
    """How the engine runs a VAE on a GPU: its convolution weights channels-last, and (unless `stock_layers`: the
    segment benchmark's stock pipeline shares its first engine's VAE) the forwards above, the residual blocks' norm
    and SiLU compiled with `compile_backend` where one is given (the worker's --compile)."""
    convolutions_channels_last(vae)
    if not stock_layers:
        use_fast_layers(vae, compile_backend=compile_backend)


def use_fast_layers(vae: torch.nn.Module, *, compile_backend: str | None = None) -> int:
    """Switch every causal convolution, RMS norm, upsampler and residual block of `vae` to the forwards above; returns
    how many. With `compile_backend` the residual blocks' norm-and-SiLU is one torch.compile'd function (dynamic
    shapes: a few compiles serve every block and chunk size; the seed segment's first encode paid them)."""
    norm_silu = torch.compile(rms_norm_silu, backend=compile_backend, dynamic=True) if compile_backend else None
    switched = 0
    for module in vae.modules():
        fast = _FAST_FORWARDS.get(type(module))
        if fast is not None:
            module.__class__ = fast  # a subclass with no state of its own: the same module, another forward
            switched += 1
        if norm_silu is not None and isinstance(module, FusedResidualBlock):
            module.norm_silu = norm_silu
    return switched


def causal_time_padding(conv: WanCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None) -> torch.Tensor:
    """diffusers' causal padding in time of `conv`'s input: the frames the last chunk cached first, zero frames for the
    rest of the 2 * pad (the spatial padding is left to the convolution)."""
    time_pad = conv._padding[4]
    if cache_x is not None and time_pad > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        time_pad -= cache_x.shape[2]
    if time_pad > 0:
        x = F.pad(x, (0, 0, 0, 0, time_pad, 0))
    return x


def frames_as_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W): a view when x is NDHWC with N = 1 (each frame's NHWC block contiguous)."""
    n, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def batch_as_frames(y: torch.Tensor, n: int) -> torch.Tensor:
    """(N*T, C, H, W) -> (N, C, T, H, W), NDHWC when y is channels-last."""
    nt, c, h, w = y.shape
    return y.reshape(n, nt // n, c, h, w).permute(0, 2, 1, 3, 4)
