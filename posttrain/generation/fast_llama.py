"""A lean forward pass for Llama-family HF models (Llama, Mistral, Qwen2, Qwen3) with a slot KV cache.

It reads the HF module's weights (no conversion, no copy unless `fuse_weights`) and runs plain
torch ops: fused QKV and gate/up projections, one preallocated KV cache of [slots, kv_heads,
max_len, head_dim] per layer, grouped-query attention without repeat_kv copies (the G query heads
that share a KV head are folded into SDPA's query-length axis), logits for the last prompt
position only, and on CUDA one captured graph per (batch bucket, key-length bucket) for decode.

Slots: row r of the cache holds one sequence from position 0; `lengths[r]` tokens are cached.
With a shared prefix (`allocate(..., prefix=tokens)`, cascade attention) the prefix's KV is held
once and row r holds positions P.. only: decode attends to the prefix with one matmul over all
rows and to each row's own keys separately, and merges the two softmaxes by their log-sum-exps.
A few-shot prompt's exemplars (~800 of GSM8K's ~880 prompt tokens) are then read once per step
instead of once per row, which on CPU is what bounds decoding at long contexts.
Active sequences always occupy rows 0..A-1 (the engine compacts rows when sequences finish), so a
decode step works on a contiguous prefix and a CUDA graph for bucket b >= A covers it; rows A..b-1
are free and whatever the graph writes there is overwritten by the next prefill into that row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


def fast_path_unsupported_reason(model) -> str | None:
    """None if `FastLlama` can run this model, else why not (the engine then uses the HF path)."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_MODEL_TYPES}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "model has no .model.layers / .lm_head"
    if getattr(cfg, "mlp_bias", False):
        return "mlp_bias=True"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (only silu)"
    rope_type = getattr(getattr(inner, "rotary_emb", None), "rope_type", None)
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope_type {rope_type!r} (dynamic or unknown)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", mtype == "mistral"):
        return "sliding-window attention"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "layer_types other than full_attention"
    return None


def shared_prefix_len(prompts: list[list[int]]) -> int:
    """Length of the common leading tokens, capped so every prompt keeps at least one of its own."""
    shortest = min(len(p) for p in prompts)
    n = 0
    first = prompts[0]
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm. On CUDA one fused kernel (F.rms_norm, float32 inside; in bf16 it can differ from
    HF's normalise-cast-scale order by one rounding); on CPU, where F.rms_norm is a chain of a
    dozen small ops, the five-op float32 form that HF uses."""
    if x.is_cuda:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """HF's rotate-half RoPE, x*cos + cat(-x2, x1)*sin, as x*cos + roll(x, D/2)*cat(-sin1, sin2):
    three kernels instead of five. cos/signed_sin broadcast against x [..., D]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def cascade_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                      scale: float) -> Tensor:
    """softmax(q . [prefix_k; k]) @ [prefix_v; v] with the prefix shared by every row.

    q [B, K, G, D] (G query heads per KV head), prefix_k/v [K, P, D], k/v [B, K, L, D], additive
    mask [B, 1, 1, L]. The prefix part is one batched matmul for all B*G queries of a KV head, so
    its keys are read once rather than B times; the two partial softmaxes are merged through
    their maxima and sums (the log-sum-exp identity), as flash attention merges its blocks.
    """
    b, nk, g, d = q.shape
    qp = q.transpose(0, 1).reshape(nk, b * g, d)
    sp = torch.bmm(qp, prefix_k.transpose(1, 2)).mul_(scale)  # [K, B*G, P]
    mp = sp.amax(-1, keepdim=True)
    ep = sp.sub_(mp).exp_()
    lp = ep.sum(-1, keepdim=True)
    op = torch.bmm(ep, prefix_v)  # [K, B*G, D], unnormalised
    op, mp, lp = (t.view(nk, b, g, -1).transpose(0, 1) for t in (op, mp, lp))
    ss = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(mask)  # [B, K, G, L]
    ms = ss.amax(-1, keepdim=True)
    es = ss.sub_(ms).exp_()
    ls = es.sum(-1, keepdim=True)
    os_ = torch.matmul(es, v)
    m = torch.maximum(mp, ms)
    wp, ws = (mp - m).exp_(), (ms - m).exp_()
    return (op * wp + os_ * ws) / (lp * wp + ls * ws)


@dataclass
class LayerWeights:
    ln_in: Tensor
    ln_post: Tensor
    qkv: list[Tensor]  # [fused] or [q, k, v]
    qkv_bias: list[Tensor | None]
    o: Tensor
    o_bias: Tensor | None
    gate_up: list[Tensor]  # [fused] or [gate, up]
    down: Tensor
    q_norm: Tensor | None  # Qwen3 per-head RMSNorm on q and k
    k_norm: Tensor | None


def _bias(linear) -> Tensor | None:
    return getattr(linear, "bias", None)


def onednn_gemm_available() -> bool:
    """Whether this torch build can run oneDNN linears over pre-packed fp32 weights."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_weight(w: Tensor, rows_hint: int) -> Tensor:
    """A oneDNN copy of a [out, in] weight, blocked for about `rows_hint` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), rows_hint)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """F.linear, or oneDNN's kernel when `w` was packed by `pack_weight`."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


class FastLlama:
    """Prefill/decode over a slot KV cache for one HF Llama-family model (see module docstring)."""

    supports_refill = True

    def __init__(self, model, fuse_weights: bool | None = None, cuda_graphs: bool | None = None,
                 cascade: bool | None = None, packed_gemm: bool | None = None):
        reason = fast_path_unsupported_reason(model)
        if reason:
            raise ValueError(f"FastLlama cannot run this model: {reason}")
        cfg = model.config
        self.model = model
        self.num_heads = cfg.num_attention_heads
        self.num_kv = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.group = self.num_heads // self.num_kv
        self.eps = cfg.rms_norm_eps
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or 1 << 30
        attn0 = model.model.layers[0].self_attn
        self.scaling = float(getattr(attn0, "scaling", self.head_dim ** -0.5))
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        # Fused QKV/gate-up copies save kernel launches on CUDA; on CPU they bought ~2% for +280 MB
        # (SmolLM2-135M, fp32), so there the live weights are used as they are.
        self.fuse = (self.device.type == "cuda") if fuse_weights is None else fuse_weights
        self.lm_head_chunk = 1024 if self.device.type == "cpu" else 0
        # CPU fp32: oneDNN copies of the weights, pre-packed once per refresh. For the few rows of a
        # decode step oneDNN's blocked kernel beats MKL's sgemm on the AMD/AVX2 dev box (1.2-1.8x
        # per matrix, decode step 200 -> 148 ms at batch 32; docs/GENERATION.md); the cost is one
        # packed copy of every matrix (+540 MB for SmolLM2-135M) and a re-pack (0.25 s) after each
        # weight update.
        cpu_fp32 = self.device.type == "cpu" and self.dtype == torch.float32
        self.packed = (cpu_fp32 and onednn_gemm_available()) if packed_gemm is None else packed_gemm
        if self.packed and not (cpu_fp32 and onednn_gemm_available()):
            raise ValueError("packed_gemm=True needs a float32 model on CPU and a torch build with oneDNN")
        self.pack_rows = 32  # oneDNN blocks the packed layout for about this many input rows
        # prompts of one prefill call that share at least this many leading tokens (few-shot
        # exemplars: ~800 of GSM8K's ~880 prompt tokens) run that prefix once; 0 disables
        self.min_shared_prefix = 32
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        # captured graphs would bake in one call's prefix tensors, so cascade runs without them
        self.cascade = (not self.cuda_graphs) if cascade is None else cascade
        if self.cascade and self.cuda_graphs:
            raise ValueError("cascade=True (a shared-prefix KV per call) cannot run with cuda_graphs=True")
        self.layers: list[LayerWeights] = []
        self._sources: list[tuple[Tensor, int, int]] = []  # (param, data_ptr, version) at last build
        self.k_cache: list[Tensor] = []
        self.v_cache: list[Tensor] = []
        self.num_slots = 0
        self.max_len = 0  # cache row capacity, positions base .. base + max_len - 1
        self.rope_len = 0
        self.base = 0  # positions held by the shared prefix (cascade), not by the rows
        self.prefix_kv: list[tuple[Tensor, Tensor]] | None = None  # per layer [1, K, base, D]
        self.lengths: list[int] = []  # absolute positions (prefix included)
        self._pos_synced = False
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self._pool = None
        self.refresh_weights()

    # -- weights -----------------------------------------------------------------------------

    def _params(self) -> list[Tensor]:
        return [t for t in self.model.parameters()]

    def weights_changed(self) -> bool:
        return any(t.data_ptr() != ptr or t._version != ver for t, ptr, ver in self._sources)

    def refresh_weights(self, force: bool = False) -> None:
        """(Re)build the fused weights if any model parameter changed since the last build.

        The trainer updates parameters in place between rollouts; in-place updates bump a
        tensor's version counter, which is what this checks. Fused tensors are refilled in
        place so captured CUDA graphs stay valid; a moved parameter drops the graphs.
        """
        if self.layers and not force and not self.weights_changed():
            return
        moved = any(t.data_ptr() != ptr for t, ptr, _ in self._sources)
        p = next(self.model.parameters())
        if (p.device, p.dtype) != (self.device, self.dtype):
            raise ValueError(f"the model moved to {p.device}/{p.dtype} after the engine was built on "
                             f"{self.device}/{self.dtype}; build a new Engine")
        m = self.model.model
        new_layers = []
        with torch.no_grad():
            for i, layer in enumerate(m.layers):
                a, mlp = layer.self_attn, layer.mlp
                qkv = [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
                biases = [_bias(a.q_proj), _bias(a.k_proj), _bias(a.v_proj)]
                gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
                if self.fuse or self.packed:
                    if any(b is not None for b in biases):
                        biases = [torch.cat([b if b is not None else w.new_zeros(w.shape[0])
                                             for b, w in zip(biases, qkv)])]
                    else:
                        biases = [None]
                    qkv, gate_up = [torch.cat(qkv)], [torch.cat(gate_up)]
                    if self.packed:  # no CUDA graphs on CPU: fresh tensors are fine
                        qkv, gate_up = [pack_weight(qkv[0], self.pack_rows)], [pack_weight(gate_up[0], self.pack_rows)]
                    elif self.layers and not moved:  # keep addresses stable for captured graphs
                        old = self.layers[i]
                        old.qkv[0].copy_(qkv[0])
                        old.gate_up[0].copy_(gate_up[0])
                        if old.qkv_bias[0] is not None:
                            old.qkv_bias[0].copy_(biases[0])
                        qkv, gate_up, biases = old.qkv, old.gate_up, old.qkv_bias
                o, down = a.o_proj.weight, mlp.down_proj.weight
                if self.packed:
                    o, down = pack_weight(o, self.pack_rows), pack_weight(down, self.pack_rows)
                new_layers.append(LayerWeights(
                    ln_in=layer.input_layernorm.weight, ln_post=layer.post_attention_layernorm.weight,
                    qkv=qkv, qkv_bias=biases, o=o, o_bias=_bias(a.o_proj),
                    gate_up=gate_up, down=down,
                    q_norm=a.q_norm.weight if hasattr(a, "q_norm") else None,
                    k_norm=a.k_norm.weight if hasattr(a, "k_norm") else None,
                ))
        self.layers = new_layers
        self.embed = m.embed_tokens.weight
        self.final_norm = m.norm.weight
        self.lm_head = self.model.lm_head.weight
        if self.packed:
            with torch.no_grad():
                self.lm_head = pack_weight(self.lm_head, self.pack_rows)
        self.lm_head_bias = _bias(self.model.lm_head)
        self._sources = [(t, t.data_ptr(), t._version) for t in self._params()]
        if moved:
            self._graphs.clear()

    # -- cache -------------------------------------------------------------------------------

    def allocate(self, num_slots: int, max_len: int, prefix: list[int] | None = None) -> None:
        """Make room for `num_slots` sequences of up to `max_len` tokens (keeps a larger cache).

        `prefix`: tokens that every prompt of the coming prefills starts with (cascade mode);
        their KV is computed here, once, and the rows then hold only what follows them.
        """
        if max_len > self.max_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's max_position_embeddings {self.max_positions}")
        if prefix and not self.cascade:
            raise ValueError("allocate(prefix=...) needs cascade=True")
        if prefix and len(prefix) >= max_len:
            raise ValueError(f"shared prefix of {len(prefix)} tokens leaves no room in max_len {max_len}")
        base = len(prefix) if prefix else 0
        self.base, self.prefix_kv = 0, None
        if max_len > self.rope_len:
            self._build_rope(min(self.max_positions, -(-max_len // 64) * 64))
        row_len = max_len - base
        if num_slots > self.num_slots or row_len > self.max_len:
            num_slots, row_len = max(num_slots, self.num_slots), max(row_len, self.max_len)
            # round up so that a slightly longer next call reuses the cache and its graphs
            row_len = min(self.max_positions, -(-row_len // 64) * 64)
            self.k_cache = self.v_cache = []  # free the old cache before allocating the new one
            self._graphs.clear()
            shape = (num_slots, self.num_kv, row_len, self.head_dim)
            self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
            self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
            self.num_slots, self.max_len = num_slots, row_len
            self._tok = torch.zeros(num_slots, dtype=torch.long, device=self.device)
            self._pos = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.lengths = [0] * self.num_slots
        self._pos_synced = False
        if prefix:
            with torch.inference_mode():
                self.prefix_kv = self._forward_prompts([list(prefix)], 0, None, None, None)[1]
            self.base, self.prefix_tokens = base, list(prefix)

    def _build_rope(self, length: int) -> None:
        with torch.no_grad():
            pos = torch.arange(length, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.model.model.rotary_emb(probe, pos)
        half = self.head_dim // 2
        sin = sin[0].clone()
        sin[:, :half] = -sin[:, :half]
        self.cos, self.sin = cos[0], sin  # [length, D]; sin with its first half negated
        self.rope_len = length
        self._graphs.clear()  # captured graphs read the old tables

    def select(self, order: list[int]) -> None:
        """Keep rows `order` as the new rows 0..len(order)-1 (compaction after finishes)."""
        moves = [(dst, src) for dst, src in enumerate(order) if dst != src]
        if moves:
            if all(src >= len(order) for _, src in moves):  # fill-from-the-tail: no overlap
                dst = torch.tensor([d for d, _ in moves], device=self.device)
                src = torch.tensor([s for _, s in moves], device=self.device)
                for kc, vc in zip(self.k_cache, self.v_cache):
                    kc.index_copy_(0, dst, kc.index_select(0, src))
                    vc.index_copy_(0, dst, vc.index_select(0, src))
            else:
                idx = torch.tensor(order, device=self.device)
                for kc, vc in zip(self.k_cache, self.v_cache):
                    kc[: len(order)] = kc.index_select(0, idx)
                    vc[: len(order)] = vc.index_select(0, idx)
        self.lengths = [self.lengths[i] for i in order] + [0] * (self.num_slots - len(order))
        self._pos_synced = False

    # -- forward -----------------------------------------------------------------------------

    def _qkv(self, w: LayerWeights, h: Tensor) -> Tensor:
        if len(w.qkv) == 1:
            return linear(h, w.qkv[0], w.qkv_bias[0])
        return torch.cat([linear(h, wt, b) for wt, b in zip(w.qkv, w.qkv_bias)], dim=-1)

    def _mlp(self, w: LayerWeights, h: Tensor) -> Tensor:
        if len(w.gate_up) == 1:
            gate, up = linear(h, w.gate_up[0]).chunk(2, dim=-1)
        else:
            gate, up = linear(h, w.gate_up[0]), linear(h, w.gate_up[1])
        return linear(F.silu(gate) * up, w.down)

    def _split_heads(self, w: LayerWeights, qkv: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[..., (H + 2K) * D] -> q [..., H, D], k [..., K, D], v [..., K, D] with RoPE applied."""
        H, K, D = self.num_heads, self.num_kv, self.head_dim
        heads = qkv.view(*qkv.shape[:-1], H + 2 * K, D)
        qk, v = heads[..., : H + K, :], heads[..., H + K:, :]
        if w.q_norm is not None:
            qk = torch.cat((rms_norm(qk[..., :H, :], w.q_norm, self.eps),
                            rms_norm(qk[..., H:, :], w.k_norm, self.eps)), dim=-2)
        qk = rope(qk, cos, sin)
        return qk[..., :H, :], qk[..., H:, :], v

    def _logits(self, x: Tensor) -> Tensor:
        h = rms_norm(x, self.final_norm, self.eps)
        chunk = self.lm_head_chunk
        if self.lm_head.is_mkldnn or not chunk or chunk >= self.lm_head.shape[0]:
            return linear(h, self.lm_head, self.lm_head_bias)
        # CPU: a [vocab, hidden] weight streamed in slices that stay in cache multiplies faster
        # than one call over the whole matrix, which MKL blocks poorly for a few rows
        out = h.new_empty(*h.shape[:-1], self.lm_head.shape[0])
        for s in range(0, self.lm_head.shape[0], chunk):
            b = None if self.lm_head_bias is None else self.lm_head_bias[s:s + chunk]
            out[..., s:s + chunk] = F.linear(h, self.lm_head[s:s + chunk], b)
        return out

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int], sources: list[int]) -> Tensor:
        """Run `prompts` from position 0; write prompt `sources[i]`'s KV into row `slots[i]`.

        Returns the last-position logits per slot, [len(slots), V]. Prompts are right-padded;
        causal masking alone keeps padding out of every real position. When the prompts share a
        long token prefix (few-shot exemplars), it runs once and only the suffixes run per prompt.
        """
        n = len(prompts)
        slot_t = torch.tensor(slots, device=self.device)
        src_t = torch.tensor(sources, device=self.device)
        if self.base:  # cascade: every prompt starts with the prefix allocate() ran
            prefix = self.base
            for i, p in enumerate(prompts):
                if len(p) <= prefix or p[:prefix] != self.prefix_tokens:
                    raise ValueError(f"prefill: prompt {i} does not extend the shared prefix given to allocate()")
            prefix_kv = self.prefix_kv
        else:  # prompts of this call that share leading tokens run them once, written to each row
            prefix = shared_prefix_len(prompts) if len(prompts) > 1 and self.min_shared_prefix else 0
            if prefix < self.min_shared_prefix:
                prefix = 0
            prefix_kv = None
            if prefix:
                prefix_kv = self._forward_prompts([prompts[0][:prefix]], 0, None, None, None)[1]
                for li, (k, v) in enumerate(prefix_kv):
                    self.k_cache[li][slot_t, :, :prefix] = k
                    self.v_cache[li][slot_t, :, :prefix] = v
        x, _ = self._forward_prompts([p[prefix:] for p in prompts], prefix, prefix_kv, slot_t, src_t)
        last = torch.tensor([len(p) - 1 - prefix for p in prompts], device=self.device)
        logits = self._logits(x[torch.arange(n, device=self.device), last])
        for s, src in zip(slots, sources):
            self.lengths[s] = len(prompts[src])
        self._pos_synced = False
        return logits.index_select(0, src_t)

    def _forward_prompts(self, prompts: list[list[int]], start: int, prefix_kv, slot_t, src_t):
        """Prompts (right-padded) at positions start..; they attend to `prefix_kv` (one shared
        [1, K, start, D] pair per layer) and causally to themselves. Writes their KV into the cache
        rows `slot_t` (from prompt `src_t`) unless slot_t is None; returns the hidden states and
        each layer's (k, v)."""
        n, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(n, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        ids = ids.to(self.device)
        cos, sin = self.cos[start:start + T, None, :], self.sin[start:start + T, None, :]
        mask = None
        if prefix_kv is not None:  # every prefix key is visible; own keys causally
            mask = torch.ones(T, start + T, dtype=torch.bool, device=self.device)
            mask[:, start:] = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
        x = F.embedding(ids, self.embed)
        kvs = []
        for li, w in enumerate(self.layers):
            h = rms_norm(x, w.ln_in, self.eps)
            q, k, v = self._split_heads(w, self._qkv(w, h), cos, sin)  # [n, T, *, D]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            kvs.append((k, v))
            if slot_t is not None:  # rows hold positions from self.base on
                at = start - self.base
                self.k_cache[li][slot_t, :, at:at + T] = k.index_select(0, src_t)
                self.v_cache[li][slot_t, :, at:at + T] = v.index_select(0, src_t)
            if prefix_kv is not None:
                pk, pv = prefix_kv[li]
                k = torch.cat([pk.expand(n, -1, -1, -1), k], dim=2)
                v = torch.cat([pv.expand(n, -1, -1, -1), v], dim=2)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                  scale=self.scaling, enable_gqa=self.group > 1)
            x = x + linear(attn.transpose(1, 2).reshape(n, T, -1), w.o, w.o_bias)
            x = x + self._mlp(w, rms_norm(x, w.ln_post, self.eps))
        return x, kvs

    def _decode_step(self, tok: Tensor, pos: Tensor, kv_len: int) -> Tensor:
        """One token per row for rows 0..b-1 at positions `pos`; attends to keys [0, kv_len)."""
        b = tok.shape[0]
        rows = torch.arange(b, device=tok.device)
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        at = pos - self.base if self.base else pos  # row index of each position
        # additive mask in the model dtype, built once per step (a bool mask is converted per layer)
        visible = torch.arange(kv_len, device=tok.device)[None, :] <= at[:, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=tok.device).masked_fill_(
            ~visible, float("-inf"))[:, None, None, :]
        x = F.embedding(tok, self.embed)
        for li, w in enumerate(self.layers):
            h = rms_norm(x, w.ln_in, self.eps)
            q, k, v = self._split_heads(w, self._qkv(w, h), cos, sin)  # [b, *, D]
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc[rows, :, at] = k
            vc[rows, :, at] = v
            # fold the G query heads of each KV head into the query axis: no repeat_kv copy
            q = q.reshape(b, self.num_kv, self.group, self.head_dim)
            if self.base:
                pk, pv = self.prefix_kv[li]
                attn = cascade_attention(q, pk[0], pv[0], kc[:b, :, :kv_len], vc[:b, :, :kv_len], mask,
                                         self.scaling)
            else:
                attn = F.scaled_dot_product_attention(q, kc[:b, :, :kv_len], vc[:b, :, :kv_len],
                                                      attn_mask=mask, scale=self.scaling)
            x = x + linear(attn.reshape(b, -1), w.o, w.o_bias)
            x = x + self._mlp(w, rms_norm(x, w.ln_post, self.eps))
        return self._logits(x)

    def _bucket(self, active: int, kv_len: int) -> tuple[int, int]:
        b = 1
        while b < active:
            b *= 2
        k = 128
        while k < kv_len:
            k *= 2
        return min(b, self.num_slots), min(k, self.max_len)

    @torch.inference_mode()
    def decode(self, tokens: Tensor, active: int) -> Tensor:
        """Feed tokens [active] to rows 0..active-1; returns logits [active, V]."""
        assert tokens.shape[0] == active <= self.num_slots
        pos = self.lengths[:active]
        kv_len = max(pos) + 1 - self.base  # row keys to attend to (the prefix's come on top)
        assert kv_len <= self.max_len, "engine must stop sequences before the cache is full"
        if not self._pos_synced:  # positions live on the device; rewrite them only after changes
            # all rows: a graph for bucket b > active also reads the free rows' positions, which
            # must stay inside the cache (free rows hold length 0)
            self._pos.copy_(torch.tensor(self.lengths))
            self._pos_synced = True
        self._tok[:active].copy_(tokens)
        for i in range(active):
            self.lengths[i] += 1
        if not self.cuda_graphs:
            out = self._decode_step(self._tok[:active], self._pos[:active], kv_len)
        else:
            key = self._bucket(active, kv_len)
            if key not in self._graphs:
                self._graphs[key] = self._capture(*key)
            graph, out = self._graphs[key]
            graph.replay()
            out = out[:active]
        self._pos[:active] += 1
        return out

    def _capture(self, b: int, kv_len: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        # Warm-up on a side stream (cuBLAS handles, SDPA kernel choice), then capture. The
        # warm-up rewrites rows 0..b-1 at their current positions with the same inputs the
        # replay uses, so it is harmless to live rows.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._decode_step(self._tok[:b], self._pos[:b], kv_len)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._decode_step(self._tok[:b], self._pos[:b], kv_len)
        self._pool = graph.pool()
        return graph, out
