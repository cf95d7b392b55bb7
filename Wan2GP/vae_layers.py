"""Faster forwards for three of the Wan VAE's layers, the same parameters and the same arithmetic up to rounding.

At 768x576x53 the fp16 VAE's decode took 1.21 s on an H200 for 199 TFLOP of convolutions: 0.46 s in cuDNN's 3-D
convolution kernels and the rest in memory-bound passes around them (bench/README.md, `vae_convs.py`). Three layers
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

`use_fast_layers(vae)` switches a loaded VAE's layers to these forwards in place (the modules keep their parameters,
state-dict keys and hooks; only the class, which carries the forward, changes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm, WanUpsample

# F.normalize divides by max(|x|, 1e-12); rms_norm by sqrt(mean(x^2) + eps): eps = 1e-24 / C is the same floor.
_NORMALIZE_FLOOR = 1e-12


class FramewiseCausalConv3d(WanCausalConv3d):
    """A causal 3-D convolution as a sum of 2-D convolutions, one per temporal tap, over the frames as a batch."""

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        time_pad = self._padding[4]  # diffusers' causal padding: the cached frames first, zero frames for the rest
        if cache_x is not None and time_pad > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            time_pad -= cache_x.shape[2]
        if time_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, time_pad, 0))
        taps, stride = self.kernel_size[0], self.stride[0]
        out_frames = (x.shape[2] - taps) // stride + 1
        span = stride * (out_frames - 1) + 1
        padding = (self._padding[2], self._padding[0])
        out = None
        for tap in range(taps):
            weight = self.weight[:, :, tap]
            if x.is_contiguous(memory_format=torch.channels_last_3d):
                weight = weight.contiguous(memory_format=torch.channels_last)
            frames = _frames_as_batch(x[:, :, tap : tap + span : stride])
            term = F.conv2d(frames, weight, self.bias if tap == 0 else None, self.stride[1:], padding)
            out = term if out is None else out.add_(term)
        assert out is not None  # a kernel has at least one tap
        return _batch_as_frames(out, x.shape[0])


class ChannelRMSNorm(WanRMS_norm):
    """WanRMS_norm in one fused kernel: rms_norm over the channel dimension, moved last (a view for channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_dim = 1 if self.channel_first else x.dim() - 1
        channels = x.shape[channel_dim]
        last = x.movedim(channel_dim, -1)
        weight = self.gamma.reshape(channels)
        normalized = F.rms_norm(last, (channels,), weight.to(x.dtype), eps=_NORMALIZE_FLOOR**2 / channels)
        if isinstance(self.bias, torch.Tensor):
            normalized = normalized + self.bias.reshape(channels).to(x.dtype)
        return normalized.movedim(-1, channel_dim)


class NativeDtypeUpsample(WanUpsample):
    """Nearest-neighbour upsampling in the input's own dtype (it copies values, so no rounding to avoid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.Upsample.forward(self, x)


_FAST_FORWARDS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    WanCausalConv3d: FramewiseCausalConv3d,
    WanRMS_norm: ChannelRMSNorm,
    WanUpsample: NativeDtypeUpsample,
}


def convolutions_channels_last(vae: torch.nn.Module) -> None:
    """The VAE's 3-D convolution weights in NDHWC, so cuDNN runs its tensor-core kernels (and their outputs stay
    channels-last): the seed segment's fp32 decode on an H200 took 1.90 s instead of 2.02 s, 8e-4 from the NCDHW one
    (bench/README.md). Module.to(memory_format=...) would refuse the parameters that are not 5-D."""
    for parameter in vae.parameters():
        if parameter.dim() == 5:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last_3d)


def prepare_for_gpu(vae: torch.nn.Module, *, stock_layers: bool = False) -> None:
    """How the engine runs a VAE on a GPU: its 3-D convolution weights channels-last, and (unless `stock_layers`: the
    segment benchmark's stock pipeline shares its first engine's VAE) the forwards above."""
    convolutions_channels_last(vae)
    if not stock_layers:
        use_fast_layers(vae)


def use_fast_layers(vae: torch.nn.Module) -> int:
    """Switch every causal convolution, RMS norm and upsampler of `vae` to the forwards above; returns how many."""
    switched = 0
    for module in vae.modules():
        fast = _FAST_FORWARDS.get(type(module))
        if fast is not None:
            module.__class__ = fast  # a subclass with no state of its own: the same module, another forward
            switched += 1
    return switched


def _frames_as_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W): a view when x is NDHWC with N = 1 (each frame's NHWC block contiguous)."""
    n, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def _batch_as_frames(y: torch.Tensor, n: int) -> torch.Tensor:
    """(N*T, C, H, W) -> (N, C, T, H, W), NDHWC when y is channels-last."""
    nt, c, h, w = y.shape
    return y.reshape(n, nt // n, c, h, w).permute(0, 2, 1, 3, 4)
