"""cuDNN's fp8 flash-attention forward (`sdpa_fp8`) through its Python frontend (`nvidia-cudnn-frontend`,
requirements-hopper.txt): one built graph per device and shape. GPU-only: Wan2GP.attention's `scaled_fp8_attention`
operator calls it on CUDA tensors, and runs its fp32 emulation on a CPU; bench/segment_vs_stock.py's attention check
compares the two on an H200 (bench/README.md). Kept apart from Wan2GP.attention so that module's logic can be
mutation-tested on a CPU without counting the lines no CPU can run."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

FP8_MAX = 448.0  # the largest finite float8_e4m3fn
# Softmax probabilities lie in [0, 1]: scaled by FP8_MAX they use e4m3's whole range.
PROBABILITY_SCALE = FP8_MAX

# The graph's scalar operands (float32, shape (1, 1, 1, 1)) and outputs, by cuDNN's names.
_CUDNN_FP8_SCALARS = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
_CUDNN_FP8_OUTPUTS = ("o", "amax_s", "amax_o")


def cudnn_frontend_backend_version() -> int | None:
    """The cuDNN library version as cuDNN's Python frontend sees it (90100 is 9.1.0), None when the frontend is not
    installed. Imported here only: the frontend loads cuDNN's library as it is imported."""
    if importlib.util.find_spec("cudnn") is None:
        return None
    import cudnn

    return int(cudnn.backend_version())


def define_fp8_attention_graph(
    cudnn: Any, handle: Any, batch: int, q_tokens: int, kv_tokens: int, heads: int, head_dim: int
) -> tuple[Any, dict[str, int]]:
    """The fp8 attention forward as an unbuilt cuDNN graph over BSHD buffers, with its tensors' uids by name. Built
    by `CudnnFp8Plan` with cuDNN's heuristic choice; bench/cudnn_fp8_plans.py builds and times every plan of it."""
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )

    def token_major(tokens: int, uid: int) -> Any:  # (batch, heads, tokens, head_dim) over a BSHD buffer
        return graph.tensor(
            uid=uid,
            dim=(batch, heads, tokens, head_dim),
            stride=(tokens * heads * head_dim, head_dim, heads * head_dim, 1),
            data_type=cudnn.data_type.FP8_E4M3,
        )

    def scalar(uid: int) -> Any:
        return graph.tensor(uid=uid, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.FLOAT)

    uids = {name: uid for uid, name in enumerate((*"qkv", *_CUDNN_FP8_SCALARS, *_CUDNN_FP8_OUTPUTS), start=1)}
    operands = {name: token_major(q_tokens if name == "q" else kv_tokens, uids[name]) for name in "qkv"}
    scalars = {name: scalar(uids[name]) for name in _CUDNN_FP8_SCALARS}
    out, _, probability_amax, out_amax = graph.sdpa_fp8(
        q=operands["q"],
        k=operands["k"],
        v=operands["v"],
        descale_q=scalars["descale_q"],
        descale_k=scalars["descale_k"],
        descale_v=scalars["descale_v"],
        descale_s=scalars["descale_s"],
        scale_s=scalars["scale_s"],
        scale_o=scalars["scale_o"],
        generate_stats=False,
        attn_scale=head_dim**-0.5,
        use_causal_mask=False,
    )
    out.set_uid(uids["o"]).set_output(True).set_dim((batch, heads, q_tokens, head_dim)).set_stride(
        (q_tokens * heads * head_dim, head_dim, heads * head_dim, 1)
    ).set_data_type(cudnn.data_type.FP8_E4M3)
    for name, amax in (("amax_s", probability_amax), ("amax_o", out_amax)):
        amax.set_uid(uids[name]).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1))
        amax.set_data_type(cudnn.data_type.FLOAT)
    return graph, uids


class CudnnFp8Plan:
    """One built cuDNN fp8 attention graph for a shape, with the device scalars it always takes."""

    def __init__(self, device_index: int, batch: int, q_tokens: int, kv_tokens: int, heads: int, head_dim: int):
        import cudnn

        self._cudnn = cudnn
        self.device = torch.device("cuda", device_index)
        with torch.cuda.device(self.device):
            self.handle = cudnn.create_handle()
        graph, self.uid = define_fp8_attention_graph(cudnn, self.handle, batch, q_tokens, kv_tokens, heads, head_dim)
        graph.build([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        self.graph = graph
        self.workspace_bytes = graph.get_workspace_size()

        def constant(value: float) -> torch.Tensor:
            return torch.full((1, 1, 1, 1), value, dtype=torch.float32, device=self.device)

        self.probability_scale, self.probability_descale = constant(PROBABILITY_SCALE), constant(1 / PROBABILITY_SCALE)

    def variant_pack(
        self,
        query8: torch.Tensor,
        key8: torch.Tensor,
        value8: torch.Tensor,
        query_descale: torch.Tensor,
        key_descale: torch.Tensor,
        value_descale: torch.Tensor,
        out8: torch.Tensor,
    ) -> dict[int, torch.Tensor]:
        """The graph's operands by uid, with the constant scales and a buffer for the amaxes cuDNN reports."""
        amaxes = torch.empty(2, dtype=torch.float32, device=self.device)  # nothing reads them
        return {
            self.uid["q"]: query8,
            self.uid["k"]: key8,
            self.uid["v"]: value8,
            self.uid["descale_q"]: query_descale,
            self.uid["descale_k"]: key_descale,
            self.uid["descale_v"]: value_descale,
            self.uid["descale_s"]: self.probability_descale,
            self.uid["scale_s"]: self.probability_scale,
            self.uid["scale_o"]: 1 / value_descale,
            self.uid["o"]: out8,
            self.uid["amax_s"]: amaxes[0:1],
            self.uid["amax_o"]: amaxes[1:2],
        }

    def run(self, pack: dict[int, torch.Tensor]) -> None:
        """Execute the graph on `variant_pack`'s operands, on the current stream."""
        stream = torch.cuda.current_stream(self.device)
        self._cudnn.set_stream(handle=self.handle, stream=stream.cuda_stream)
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=self.device)
        self.graph.execute(pack, workspace, handle=self.handle)


# Built graphs, one per device and shape: like torch's own kernel caches, they live as long as the process (a
# worker sees a handful of sizes; building one takes cuDNN's heuristics and a kernel load).
@functools.cache
def cudnn_fp8_plan(device_index: int, batch: int, q_tokens: int, kv_tokens: int, heads: int, head_dim: int):
    return CudnnFp8Plan(device_index, batch, q_tokens, kv_tokens, heads, head_dim)
