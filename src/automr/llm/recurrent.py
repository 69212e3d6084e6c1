"""Recurrent mixers run exactly with masked positions anywhere, for the layer split.

A recurrent state has no mask to leave padding or inserted positions out of, so the split runs
the recurrent mixers of hybrid and attention-free models its own way: masked inputs are zeroed,
causal convolutions run over each row's real positions only (after the last ``kernel - 1`` real
inputs, kept as state), and masked positions neither decay nor write a state. Each function
takes the model's own mixer module and gives each row what the model gives on its real
positions alone; the chunked and one-token kernels are the mixer's module's own.
"""

import math
import sys

import torch
from jaxtyping import Bool
from torch import Tensor, nn
from transformers.activations import ACT2FN


def gated_delta_masked(
    mixer: nn.Module, hidden: Tensor, mask: Bool[Tensor, "batch seq"],
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A Gated DeltaNet mixer (the ``linear_attn`` of Qwen 3.5 or Qwen3-Next) on ``hidden``
    where positions with ``mask`` False change nothing: each row gives exactly what the model
    gives on its real positions alone, wherever the masked ones are (left or right padding,
    inserted memory).

    Masked inputs are zeroed; the causal convolution runs over each row's real positions only,
    after the last ``kernel - 1`` real inputs before them (``state[0]``); masked positions get
    no decay (``g = 0``) and no write (``beta = 0``), so the recurrent state (``state[1]``)
    passes them unchanged. The model module's own chunked and one-token kernels do the rest
    (flash-linear-attention's where transformers finds it). Returns the output (zero at masked
    positions) and the state after the last real position.
    """
    kernels = sys.modules[type(mixer).__module__]
    batch, seq, _ = hidden.shape
    keep = mask.to(hidden.dtype).unsqueeze(-1)
    qkv, gate, b, a = _gated_delta_inputs(mixer, hidden * keep)
    conv, conv_state = causal_conv_masked(mixer.conv1d, qkv, mask,
                                          None if state is None else state[0], mixer.activation)
    query, key, value = torch.split(conv, [mixer.key_dim, mixer.key_dim, mixer.value_dim], -1)
    query = query.reshape(batch, seq, -1, mixer.head_k_dim)
    key = key.reshape(batch, seq, -1, mixer.head_k_dim)
    value = value.reshape(batch, seq, -1, mixer.head_v_dim)
    beta = b.sigmoid() * keep
    decay = -mixer.A_log.float().exp() * nn.functional.softplus(a.float() + mixer.dt_bias)
    decay = decay * keep.float()
    recurrent = None if state is None else state[1]
    rule = (kernels.torch_recurrent_gated_delta_rule if recurrent is not None and seq == 1
            else kernels.torch_chunk_gated_delta_rule)
    core, recurrent = rule(query, key, value, g=decay, beta=beta, initial_state=recurrent,
                           output_final_state=True, use_qk_l2norm_in_kernel=True)
    core = mixer.norm(core.reshape(-1, mixer.head_v_dim), gate.reshape(-1, mixer.head_v_dim))
    return mixer.out_proj(core.reshape(batch, seq, -1)), (conv_state, recurrent)


def mamba2_masked(
    mixer: nn.Module, hidden: Tensor, mask: Bool[Tensor, "batch seq"],
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A Mamba2 mixer (the ``mamba`` of Granite 4.0-H, Bamba and Falcon-H1) on ``hidden`` where
    positions with ``mask`` False change nothing: each row gives exactly what the model gives on
    its real positions alone, wherever the masked ones are.

    As :func:`gated_delta_masked`: masked inputs are zeroed and the causal convolution runs over
    each row's real positions only, after the last ``kernel - 1`` real inputs before them
    (``state[0]``). The time step is made as the model's scan makes it (``dt_bias``, softplus,
    the ``time_step_limit`` clamp), then set to 0 at masked positions: no decay
    (``exp(0 * A) = 1``) and no write (``0 * B x``), so the state (``state[1]``) passes them
    unchanged; the scan is then told to add no bias, softplus or clamp of its own. The model
    module's own chunked scan and one-token update do the rest (mamba-ssm's where transformers
    finds it), the ``D`` skip connection, gated norm and output projection as the model has
    them. Returns the output (its masked positions unused) and the state after the last real
    position. (The model's own one-token update leaves ``time_step_limit`` out; here every
    step clamps, as its full forward does.)
    """
    kernels = sys.modules[type(mixer).__module__]
    batch, seq, _ = hidden.shape
    keep = mask.to(hidden.dtype).unsqueeze(-1)
    projected = mixer.in_proj(hidden * keep * getattr(mixer, "ssm_in_multiplier", 1.0))
    if hasattr(mixer, "mup_vector"):  # Falcon-H1's per-channel multipliers
        projected = projected * mixer.mup_vector
    gate, inputs, dt = projected.split(
        [mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
    conv, conv_state = causal_conv_masked(mixer.conv1d, inputs, mask,
                                          None if state is None else state[0], mixer.activation)
    heads, head_dim, groups, size = (mixer.num_heads, mixer.head_dim, mixer.n_groups,
                                     mixer.ssm_state_size)
    x, B, C = torch.split(conv, [mixer.intermediate_size, groups * size, groups * size], -1)
    dt = nn.functional.softplus(dt + mixer.dt_bias.to(dt.dtype))
    low, high = mixer.time_step_limit or (0.0, math.inf)
    dt = dt.clamp(min=low, max=high) * keep
    A = -torch.exp(mixer.A_log.float())
    ssm = None if state is None else state[1]
    if ssm is not None and seq == 1:
        ssm = ssm.clone()  # the one-token update writes the state in place
        out = kernels.mamba2_selective_state_update(
            ssm, x.view(batch, heads, head_dim), dt.transpose(1, 2).expand(-1, -1, head_dim),
            A[:, None, None].expand(-1, head_dim, size), B.view(batch, groups, size),
            C.view(batch, groups, size), mixer.D[:, None].expand(-1, head_dim), z=None,
            dt_bias=None, dt_softplus=False)
    else:
        out, ssm = kernels.mamba2_chunk_scan(
            x.view(batch, seq, heads, head_dim), dt, A, B.view(batch, seq, groups, size),
            C.view(batch, seq, groups, size), chunk_size=mixer.chunk_size, D=mixer.D, z=None,
            dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf), initial_states=ssm,
            return_final_states=True)
    out = out.reshape(batch, seq, -1)
    if getattr(mixer, "mamba_rms_norm", True):
        out = mixer.norm(out, gate)
    else:  # Falcon-H1 without the gated norm
        out = out * nn.functional.silu(gate)
    return mixer.out_proj(out.to(hidden.dtype)), (conv_state, ssm)


def mamba1_masked(
    mixer: nn.Module, hidden: Tensor, mask: Bool[Tensor, "batch seq"],
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A Mamba1 mixer (the ``mixer`` of Mamba and FalconMamba, the ``mamba`` of Jamba) on
    ``hidden`` where positions with ``mask`` False change nothing: each row gives exactly what
    the model gives on its real positions alone, wherever the masked ones are.

    As :func:`mamba2_masked`: masked inputs are zeroed, the input projection gives values ``x``
    and a gate; ``x`` goes through the causal convolution over each row's real positions only,
    after the last ``kernel - 1`` real inputs before them (``state[0]``); ``x_proj`` gives the
    time step's low-rank input, ``B`` and ``C`` (FalconMamba and Jamba normalise all three),
    ``dt_proj`` and softplus the time step per channel, then set to 0 at masked positions: no
    decay (``exp(0 * A) = 1``) and no write (``0 * B x``), so the state (``state[1]``,
    ``[batch, d_inner, d_state]``) passes them unchanged. The module's own scan runs a prompt
    from an empty state; from a state (a cached chunk or step) its one-token update runs one
    position at a time (transformers' scan starts every call from zeros). Both add the ``D``
    skip connection and the ``silu`` gate. Returns the output (its masked positions unused) and
    the state after the last real position."""
    kernels = sys.modules[type(mixer).__module__]
    batch, seq, _ = hidden.shape
    keep = mask.to(hidden.dtype).unsqueeze(-1)
    x, gate = mixer.in_proj(hidden * keep).chunk(2, dim=-1)
    conv, conv_state = causal_conv_masked(mixer.conv1d, x, mask,
                                          None if state is None else state[0], mixer.activation)
    size = mixer.ssm_state_size
    time_step, B, C = torch.split(mixer.x_proj(conv), [mixer.time_step_rank, size, size], -1)
    if hasattr(mixer, "dt_layernorm"):  # FalconMamba's and Jamba's norms
        time_step, B, C = (mixer.dt_layernorm(time_step), mixer.b_layernorm(B),
                           mixer.c_layernorm(C))
    if hasattr(getattr(mixer, "config", None), "_is_quantized"):  # as the module: its linear
        dt = (mixer.dt_proj(time_step) - mixer.dt_proj.bias).transpose(1, 2)
    else:
        dt = mixer.dt_proj.weight @ time_step.transpose(1, 2)
    dt = nn.functional.softplus(dt + mixer.dt_proj.bias.float().to(dt.dtype)[:, None])
    dt = dt * mask.to(dt.dtype).unsqueeze(1)  # [batch, d_inner, seq]
    A = -torch.exp(mixer.A_log.float())
    x, gate = conv.transpose(1, 2), gate.transpose(1, 2)
    if state is None and seq > 1:
        out, ssm = kernels.mamba_selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D=mixer.D.float(), z=gate,
            delta_bias=None, delta_softplus=False, return_last_state=True)
    else:
        ssm = (torch.zeros(batch, *A.shape, dtype=torch.promote_types(A.dtype, hidden.dtype),
                           device=hidden.device) if state is None else state[1].clone())
        out = torch.stack([kernels.mamba_selective_state_update(
            ssm, x[..., i], dt[..., i], A, B[:, i], C[:, i], mixer.D.float(), z=gate[..., i],
            dt_bias=None, dt_softplus=False) for i in range(seq)], -1)  # ssm written in place
    return mixer.out_proj(out.transpose(1, 2).to(hidden.dtype)), (conv_state, ssm)


def mamba_masked_for(mixer: nn.Module) -> object:
    """:func:`mamba1_masked` for a Mamba1 mixer (it has ``x_proj``), else
    :func:`mamba2_masked`."""
    return mamba1_masked if hasattr(mixer, "x_proj") else mamba2_masked


def short_conv_masked(
    mixer: nn.Module, hidden: Tensor, mask: Bool[Tensor, "batch seq"],
    state: tuple[Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor]]:
    """LFM2's gated short convolution (its ``conv`` layers' mixer) on ``hidden`` where positions
    with ``mask`` False change nothing: the input projection gives gates ``B`` and ``C`` and
    values ``x``; ``B * x`` goes through the causal convolution over each row's real positions
    only, after the last ``kernel - 1`` real inputs before them (``state[0]``,
    :func:`causal_conv_masked`), is gated by ``C`` and projected out. Returns the output (its
    masked positions unused) and the state after the last real position."""
    B, C, x = mixer.in_proj(hidden).chunk(3, dim=-1)
    conv, conv_state = causal_conv_masked(mixer.conv, B * x, mask,
                                          None if state is None else state[0])
    return mixer.out_proj(C * conv), (conv_state,)


def causal_conv_masked(
    conv1d: nn.Conv1d, inputs: Tensor, mask: Bool[Tensor, "batch seq"],
    before: Tensor | None = None, activation: str | None = None,
) -> tuple[Tensor, Tensor]:
    """A mixer's causal depthwise convolution ``conv1d``, then ``activation`` where it has one,
    over each row's real positions only: they are gathered to the front (a stable sort), after
    ``before``, the last ``kernel - 1`` real inputs of earlier calls (zeros at first),
    convolved, and put back; masked positions get zeros. Returns the outputs and the last
    ``kernel - 1`` real inputs now (``[batch, kernel - 1, channels]``)."""
    batch, _, channels = inputs.shape
    width = conv1d.kernel_size[0] - 1
    keep = mask.to(inputs.dtype).unsqueeze(-1)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # real ones first
    order = order.unsqueeze(-1).expand(-1, -1, channels)
    before = inputs.new_zeros(batch, width, channels) if before is None else before.to(
        inputs.dtype)
    inputs = torch.cat([before, inputs.gather(1, order)], 1)
    weight = conv1d.weight
    conv = nn.functional.conv1d(inputs.transpose(1, 2).to(weight.dtype), weight,
                                conv1d.bias, groups=channels).transpose(1, 2)
    if activation is not None:
        conv = ACT2FN[activation](conv)
    conv = conv.to(inputs.dtype)
    conv = torch.empty_like(conv).scatter_(1, order, conv) * keep
    tail = mask.sum(1, keepdim=True) + torch.arange(width, device=mask.device)
    return conv, inputs.gather(1, tail.unsqueeze(-1).expand(-1, -1, channels))


def _gated_delta_inputs(mixer: nn.Module,
                        hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A Gated DeltaNet mixer's projections of ``hidden``: the convolution's inputs (queries,
    keys and values side by side), the output gate ``[batch, seq, heads, head_v_dim]`` and the
    ``b`` and ``a`` that give each value head's write strength and decay. Qwen 3.5 projects
    each apart; Qwen3-Next fuses them (``in_proj_qkvz``, ``in_proj_ba``, interleaved per key
    head), which its module's own ``fix_query_key_value_ordering`` takes apart."""
    if hasattr(mixer, "in_proj_qkvz"):
        query, key, value, gate, b, a = mixer.fix_query_key_value_ordering(
            mixer.in_proj_qkvz(hidden), mixer.in_proj_ba(hidden))
        return torch.cat([part.flatten(2) for part in (query, key, value)], -1), gate, b, a
    batch, seq, _ = hidden.shape
    gate = mixer.in_proj_z(hidden).reshape(batch, seq, -1, mixer.head_v_dim)
    return mixer.in_proj_qkv(hidden), gate, mixer.in_proj_b(hidden), mixer.in_proj_a(hidden)
