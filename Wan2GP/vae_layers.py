"""Faster forwards for the Wan VAE's layers, the same parameters and the same arithmetic up to rounding.

At 768x576x53 the fp16 VAE's decode took 1.21 s on an H200 for 199 TFLOP of convolutions: 0.46 s in cuDNN's 3-D
convolution kernels and the rest in memory-bound passes around them (bench/README.md, `vae_convs.py`). Four modules
cause most of those passes:

- `WanCausalConv3d` pads each input with a copy (the cached frames joined, `F.pad`) before a 3-D convolution.
  `FramewiseCausalConv3d` runs it as kt 2-D convolutions over time-shifted frames (the frames are the batch: views of
  an NDHWC input), summed, with the spatial padding done inside the convolution and the cached frames convolved
  where they lie. cuDNN's 2-D kernels were also faster than its 3-D ones at the decoder's sizes (96 channels at full
  resolution: 2.73 ms against 4.56 ms). Its weight is laid out tap by tap (`taps_first`) so no tap copies it.
- `WanRMS_norm` upcasts to fp32, normalizes, casts back, then scales, multiplies by gamma and adds a zero bias: six
  passes over the tensor. `ChannelRMSNorm` is one fused `rms_norm` over the channels (fp32 inside, as diffusers), which
  equals F.normalize(x) * sqrt(C): x / rms(x) is x / |x| * sqrt(C).
- `WanUpsample` upsamples a copy in fp32 and casts it back; nearest-neighbour upsampling only copies values, so
  `NativeDtypeUpsample` does it in the input's dtype, bit for bit the same result.
- `WanResidualBlock` runs each norm and its SiLU as two passes; `FusedResidualBlock` runs them as one function,
  which the worker's --compile compiles into one kernel (and then adds the convolutions' biases in that kernel and
  in the output add's, not in passes of their own), and keeps its tensors channels-last.

`use_fast_layers(vae)` switches a loaded VAE's modules to these forwards in place (the modules keep their parameters,
state-dict keys and hooks; only the class, which carries the forward, changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None, *, add_bias: bool = True) -> torch.Tensor:
        """`add_bias=False` leaves the bias to the caller, to add in a kernel it runs anyway: cuDNN's convolution adds
        it in a pass of its own (a broadcast add, 0.075 s of the seed segment's decode, bench/README.md)."""
        taps, time_pad = self.kernel_size[0], self._padding[4]
        cached = 0 if cache_x is None or time_pad == 0 else cache_x.shape[2]
        bias = self.bias if add_bias else None
        if self.stride[0] == 1 and taps == time_pad + 1 and x.shape[0] == 1 and cached <= time_pad:
            return self._shifted_taps(x, cache_x if cached else None, bias)
        return self._padded_taps(x, cache_x, bias)

    def _shifted_taps(self, x: torch.Tensor, cache_x: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """Stride 1, "same" causal padding, one video: output frame j's tap k reads padded frame j + k, where the
        padding is the cached frames after zeros. The last tap (the frame itself) covers every output frame; each
        earlier one adds into the frames it shifts to, from x's frames and from the cached ones apart: the padded
        input, a copy of every input, is never built."""
        last = self.kernel_size[0] - 1
        frames = frames_as_batch(x)  # a view for NDHWC
        count = frames.shape[0]
        out = self._tap(frames, last, bias)
        cached = frames_as_batch(cache_x) if cache_x is not None else None
        zeros = last - (cached.shape[0] if cached is not None else 0)  # padded frames before the cached ones
        for tap in range(last):
            shift = last - tap
            if shift < count:
                out[shift:].add_(self._tap(frames[: count - shift], tap))
            # output frames j < shift read padded frame j + tap: zeros below `zeros`, cached frames from there
            first, end = max(0, zeros - tap), min(shift, count)
            if cached is not None and first < end:
                out[first:end].add_(self._tap(cached[first + tap - zeros : end + tap - zeros], tap))
        return batch_as_frames(out, 1)

    def _padded_taps(self, x: torch.Tensor, cache_x: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """Any stride and padding: the padded input built as diffusers builds it, each tap over a view of it."""
        x = causal_time_padding(self, x, cache_x)
        taps, stride = self.kernel_size[0], self.stride[0]
        out_frames = (x.shape[2] - taps) // stride + 1
        span = stride * (out_frames - 1) + 1
        out = None
        for tap in range(taps):
            term = self._tap(frames_as_batch(x[:, :, tap : tap + span : stride]), tap, bias if tap == 0 else None)
            out = term if out is None else out.add_(term)
        assert out is not None  # a kernel has at least one tap
        return batch_as_frames(out, x.shape[0])

    def _tap(self, frames: torch.Tensor, tap: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The 2-D convolution of temporal tap `tap` over (frames, C, H, W), the spatial padding inside it."""
        weight = self.weight[:, :, tap]
        if channels_innermost(self.weight) and not weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)  # a copy, unless laid out by taps_first
        return F.conv2d(frames, weight, bias, self.stride[1:], (self._padding[2], self._padding[0]))


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


def bias_rms_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """rms_norm_silu(x + bias): the norm and activation after a convolution that left its bias out."""
    return rms_norm_silu(x + bias, weight)


def add_bias_and_shortcut(x: torch.Tensor, bias: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """A residual block's output: its last convolution's output, that convolution's bias and the shortcut."""
    return x + bias + shortcut


@dataclass(frozen=True)
class CompiledBlockFunctions:
    """A residual block's elementwise work, torch.compile'd by `rows_compiled`: each function one kernel."""

    norm_silu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    bias_norm_silu: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    add_output: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

    @classmethod
    def compile(cls, backend: str | Callable) -> CompiledBlockFunctions:
        return cls(
            rows_compiled(rms_norm_silu, backend),
            rows_compiled(bias_rms_norm_silu, backend),
            rows_compiled(add_bias_and_shortcut, backend),
        )


class FusedResidualBlock(WanResidualBlock):
    """WanResidualBlock with each norm and its SiLU as one function of the channels-last tensor (rms_norm_silu, one
    pass instead of two) and the shortcut added in place. In a VAE laid out channels-last it takes its input
    channels-last (diffusers' temporal upsampling hands it an NCDHW tensor), so that its norms, convolutions and add
    all see one layout. With `compiled` (the worker's --compile) each elementwise step is one compiled kernel, and the
    convolutions leave their biases to the kernels after them: conv1's to the norm-and-SiLU, conv2's (and the
    shortcut convolution's) to the output add."""

    compiled: CompiledBlockFunctions | None = None

    def forward(
        self, x: torch.Tensor, feat_cache: list | None = None, feat_idx: list[int] | None = None
    ) -> torch.Tensor:
        feat_idx = feat_idx if feat_idx is not None else [0]
        if channels_innermost(self.conv1.weight) and not x.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        compiled = self.compiled
        if compiled is None:
            shortcut = self.conv_shortcut(x)
            x = self._causal(self.conv1, self._norm_silu(rms_norm_silu, self.norm1, x), feat_cache, feat_idx)
            x = self._norm_silu(rms_norm_silu, self.norm2, x)
            x = self._causal(self.conv2, self.dropout(x), feat_cache, feat_idx)
            return x.add_(shortcut)
        # the biases as new tensors: a Parameter, or a tensor made outside inference mode, would each compile again
        bias = self.conv2.bias.to(x.dtype, copy=True)
        if isinstance(self.conv_shortcut, WanCausalConv3d):
            shortcut = self.conv_shortcut(x, add_bias=False)
            bias += self.conv_shortcut.bias
        else:
            shortcut = x
        x = self._norm_silu(compiled.norm_silu, self.norm1, x)
        x = self._causal(self.conv1, x, feat_cache, feat_idx, add_bias=False)
        x = self._norm_silu(compiled.bias_norm_silu, self.norm2, x, self.conv1.bias.to(x.dtype, copy=True))
        x = self._causal(self.conv2, self.dropout(x), feat_cache, feat_idx, add_bias=False)
        return _by_rows(compiled.add_output, x, bias, _as_rows(shortcut))

    @staticmethod
    def _norm_silu(
        function: Callable[..., torch.Tensor], norm: WanRMS_norm, x: torch.Tensor, *bias: torch.Tensor
    ) -> torch.Tensor:
        return _by_rows(function, x, norm.gamma.reshape(x.shape[1]).to(x.dtype), *bias)

    @staticmethod
    def _causal(
        conv: WanCausalConv3d, x: torch.Tensor, feat_cache: list | None, feat_idx: list[int], **options: bool
    ) -> torch.Tensor:
        """conv(x) with diffusers' cache protocol: the conv gets the frames cached by the last chunk, and the cache
        keeps this chunk's last CACHE_T frames (topped up from the old cache when the chunk is shorter)."""
        if feat_cache is None:
            return conv(x, **options)
        index = feat_idx[0]
        kept = x[:, :, -CACHE_T:].clone()
        if kept.shape[2] < CACHE_T and feat_cache[index] is not None:
            kept = torch.cat([feat_cache[index][:, :, -1:].to(kept.device), kept], dim=2)
        out = conv(x, feat_cache[index], **options)
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


def prepare_for_gpu(
    vae: torch.nn.Module, *, stock_layers: bool = False, compile_backend: str | Callable | None = None
) -> None:
    """How the engine runs a VAE on a GPU: its convolution weights channels-last, and (unless `stock_layers`: the
    segment benchmark's stock pipeline shares its first engine's VAE) the forwards above, the residual blocks'
    elementwise functions compiled with `compile_backend` where one is given (the worker's --compile)."""
    convolutions_channels_last(vae)
    if not stock_layers:
        use_fast_layers(vae, compile_backend=compile_backend)


def use_fast_layers(vae: torch.nn.Module, *, compile_backend: str | Callable | None = None) -> int:
    """Switch every causal convolution, RMS norm, upsampler and residual block of `vae` to the forwards above; returns
    how many. A channels-last convolution's weight is laid out `taps_first`. With `compile_backend` the residual
    blocks' norm-and-SiLU and their output add are torch.compile'd functions of the rows of channels
    (`rows_compiled`: a compile per channel count serves every block and chunk size; a worker's first encode pays
    them), which take the convolutions' biases."""
    compiled = CompiledBlockFunctions.compile(compile_backend) if compile_backend else None
    switched = 0
    for module in vae.modules():
        fast = _FAST_FORWARDS.get(type(module))
        if fast is not None:
            module.__class__ = fast  # a subclass with no state of its own: the same module, another forward
            switched += 1
        if isinstance(module, FramewiseCausalConv3d) and module.weight.is_contiguous(
            memory_format=torch.channels_last_3d
        ):
            module.weight.data = taps_first(module.weight.data)
        if compiled is not None and isinstance(module, FusedResidualBlock):
            module.compiled = compiled
    return switched


def taps_first(weight: torch.Tensor) -> torch.Tensor:
    """A (O, I, kt, kh, kw) weight with the same values, laid out tap by tap, each tap's (O, I, kh, kw) slice a
    channels-last 2-D weight: the framewise convolution's taps take their slices as they are instead of copying each
    into that layout on every call (0.034 s of copies in the seed segment's decode, bench/README.md). .to() and
    .float() keep the layout (it is dense)."""
    return weight.permute(2, 0, 3, 4, 1).contiguous().permute(1, 4, 0, 2, 3)


def channels_innermost(weight: torch.Tensor) -> bool:
    """Whether a convolution weight is in one of the channels-last layouts (channels_last_3d, taps_first)."""
    return weight.shape[1] > 1 and weight.stride(1) == 1


def rows_compiled(function: Callable[..., torch.Tensor], backend: str | Callable) -> Callable[..., torch.Tensor]:
    """torch.compile'd `function(rows, *operands)` of (positions, channels) tensors and per-channel vectors, with the
    positions symbolic and the channels fixed: a compile per channel count serves every block, chunk and size. With
    the channel count fixed inductor keeps a row in registers (a `triton_per_` kernel, one read of the tensor); with
    every dimension symbolic (dynamic=True) it looped over each row (`triton_red_`): the norm-and-SiLU took 0.215 s of
    the seed segment's decode that way on these 2-D rows (0.081 s on the 5-D views before them) against 0.030 s
    (bench/README.md)."""
    compiled = torch.compile(function, backend=backend)

    def call(*operands: torch.Tensor) -> torch.Tensor:
        for operand in operands:
            if operand.dim() == 2:
                torch._dynamo.maybe_mark_dynamic(operand, 0)
            torch._dynamo.mark_static(operand, operand.dim() - 1)
        return compiled(*operands)

    return call


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> contiguous (N*T*H*W, C): a view of an NDHWC tensor (a copy of any other)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]).contiguous()


def _by_rows(function: Callable[..., torch.Tensor], x: torch.Tensor, *operands: torch.Tensor) -> torch.Tensor:
    """function(rows of x, *operands) as a tensor of x's shape, channels-last."""
    n, channels, t, h, w = x.shape
    return function(_as_rows(x), *operands).view(n, t, h, w, channels).movedim(-1, 1)


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
