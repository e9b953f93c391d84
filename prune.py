"""The structured rebuild (EarlyBERT, Chen et al., ACL 2021, sec. 3.3): remove the heads and
FFN neurons a ticket prunes, physically, so the efficient phase trains a smaller BERT
instead of a masked one.

    check_ticket_fits   a ticket drawn from this model's sizes, or a one-line error
    slice_state         the kept units' entries of a state dict (weights, AdamW moments)
    fold_coefficients   the surviving slimming coefficients multiplied into the weights
    rebuild             the smaller model: slice_state, then fold_coefficients

The rebuilt model's outputs equal the full model's with the pruned units' coefficients
set to zero (tests/test_prune.py checks it), and its config records each layer's heads
and FFN width, so the checkpoint loads on its own.
"""
import dataclasses
import re
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:  # ticket.py imports this file
    from ticket import Ticket


def check_ticket_fits(ticket: "Ticket", config, ticket_path: str, where: str = "the checkpoint"):
    """Raise a one-line ValueError naming `ticket_path` unless the ticket's lists are consistent
    and, given a config, drawn from a model with its per-layer sizes (`where` names that model)."""
    n_ticket = len(ticket.full_heads)
    if not len(ticket.heads) == len(ticket.ffn) == len(ticket.full_ffn) == n_ticket:
        raise ValueError(f"{ticket_path}: its heads, ffn, full_heads and full_ffn lists differ in "
                         "length (one entry per layer each); the file is damaged, draw it again")
    if config is not None and n_ticket != config.num_hidden_layers:
        raise ValueError(f"{ticket_path}: drawn from a model with {n_ticket} layers, "
                         f"but {where} has {config.num_hidden_layers}")
    for l in range(n_ticket):
        sizes = (config.heads(l), config.ffn(l)) if config is not None else (ticket.full_heads[l], ticket.full_ffn[l])
        for what, full, size, kept in (("heads", ticket.full_heads[l], sizes[0], ticket.heads[l]),
                                       ("FFN neurons", ticket.full_ffn[l], sizes[1], ticket.ffn[l])):
            if full != size:
                raise ValueError(f"{ticket_path}: layer {l} had {full} {what} when the ticket was "
                                 f"drawn, but {where}'s layer {l} has {size}; use the model it was drawn from")
            if not kept:
                raise ValueError(f"{ticket_path}: layer {l} keeps no {what}; every layer must keep one")
            if len(set(kept)) != len(kept):
                raise ValueError(f"{ticket_path}: layer {l} lists some {what} twice")
            if not all(0 <= i < size for i in kept):
                raise ValueError(f"{ticket_path}: layer {l} keeps {what} {kept}, "
                                 f"but the layer has only {size} (indices 0..{size - 1})")


# layers.L.<producer> weight/bias: kept units' output rows; layers.L.<consumer>.weight: input columns
_SLICED = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:(attn\.(?:query|key|value)|ffn\.up)\.(?:weight|bias)"
                     r"|(attn\.out|ffn\.down)\.weight)$")


def slice_state(tensors: dict, ticket: "Ticket") -> dict:
    """The entries of a state dict (parameter name -> tensor: weights, or AdamW's exp_avg /
    exp_avg_sq per parameter) that the ticket keeps, as EarlyBERT sec. 3.3 removes units:
    per layer, the kept heads' output rows (and bias entries) of query/key/value and their
    input columns of the attention output projection; the kept neurons' output rows (and
    bias entries) of the FFN up-projection and their input columns of its down-projection.
    Everything else (embeddings, LayerNorms, the out/down biases, task heads) passes
    through; the slimming coefficients are dropped (fold_coefficients folds them in)."""
    out = {}
    for name, t in tensors.items():
        m = _SLICED.search(name)
        if m is None:
            if not name.endswith(("head_coef", "ffn_coef")):
                out[name] = t
            continue
        l, dim = int(m[1]), 0 if m[2] else 1  # producers: rows; consumers: columns
        kept, full = (ticket.heads[l], ticket.full_heads[l]) if (m[2] or m[3]).startswith("attn") else \
            (ticket.ffn[l], ticket.full_ffn[l])
        width = t.shape[dim] // full  # head_dim for heads, 1 for neurons
        assert width * full == t.shape[dim], f"{name}: {t.shape[dim]} does not divide into {full} units"
        index = (torch.tensor(kept)[:, None] * width + torch.arange(width)).flatten()  # (kept * width,)
        out[name] = t.index_select(dim, index.to(t.device))
    return out


@torch.no_grad()
def rebuild(model: nn.Module, ticket: "Ticket") -> nn.Module:
    """A physically smaller copy of `model` (same class) keeping only the ticket's heads and
    neurons (EarlyBERT sec. 3.3, efficient training): the weights sliced by slice_state, then
    each kept unit's input columns of the attention output / FFN down projection multiplied
    by its slimming coefficient. Folding the coefficients in leaves the rebuilt model without
    any, and makes its outputs equal to `model`'s with the pruned units' coefficients set to
    zero. A model without coefficients counts as all ones; `model` itself is not modified.
    The official code has no folding: it rewinds to the weights the search started from,
    which have no coefficients (here too that is only slicing). Going on from the draw step
    (train.py's --init continue) needs them folded in, so the smaller model computes what
    the searched one did; its AdamW moments go through the same two functions."""
    check_ticket_fits(ticket, model.config, "ticket")
    weight = next(model.parameters())
    small = type(model)(pruned_config(model.config, ticket)).to(device=weight.device, dtype=weight.dtype)
    small.load_state_dict(fold_coefficients(slice_state(model.state_dict(), ticket), model, ticket))  # strict
    return small.train(model.training)


def pruned_config(config, ticket: "Ticket"):
    return dataclasses.replace(config, heads_per_layer=list(map(len, ticket.heads)),
                               ffn_per_layer=list(map(len, ticket.ffn)))


@torch.no_grad()
def fold_coefficients(state: dict, model: nn.Module, ticket: "Ticket", power: int = 1) -> dict:
    """A sliced state with each kept unit's input columns of the attention output and FFN down
    projections multiplied by the unit's slimming coefficient (from `model`) to the `power`:
    1 for the weights (rebuild); -1 for AdamW's exp_avg and -2 for exp_avg_sq, which then hold
    what they would for the folded weights, whose gradients are the old ones divided by c.
    A model without coefficients leaves the state as it is."""
    state, prefix = dict(state), "bert." if hasattr(model, "bert") else ""
    for l, layer in enumerate(getattr(model, "bert", model).layers):
        for coef, kept, name, width in ((layer.attn.head_coef, ticket.heads[l], "attn.out", model.config.head_dim),
                                        (layer.ffn.ffn_coef, ticket.ffn[l], "ffn.down", 1)):
            key = f"{prefix}layers.{l}.{name}.weight"
            if coef is not None and key in state:  # (hidden, kept units * width): each unit's columns scaled
                scale = coef.float()[torch.tensor(kept, device=coef.device)].repeat_interleave(width) ** power
                state[key] = (state[key].float() * scale.to(state[key].device)).to(state[key].dtype)
    return state


def adamw_state(model: nn.Module, optimizer: torch.optim.Optimizer, ticket: "Ticket") -> dict:
    """`model`'s AdamW state as the rebuilt model's, by parameter name: {"step", "exp_avg",
    "exp_avg_sq"}, the moments sliced like the weights. The attention output and FFN down
    columns are multiplied by c in the rebuild, so their gradients are the old ones over c:
    their exp_avg is divided by c and their exp_avg_sq by c^2. Coefficients have no state left."""
    named = {name: optimizer.state[p] for name, p in model.named_parameters() if p in optimizer.state}
    moments = {key: fold_coefficients(slice_state({n: s[key] for n, s in named.items()}, ticket), model, ticket,
                                      power) for key, power in (("exp_avg", -1), ("exp_avg_sq", -2))}
    return {name: {"step": named[name]["step"], "exp_avg": moments["exp_avg"][name],
                   "exp_avg_sq": moments["exp_avg_sq"][name]} for name in moments["exp_avg"]}


def load_adamw_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
    """Put adamw_state's result into the rebuilt model's optimizer, so that going on after the
    draw is as smooth as not pruning (a fresh AdamW moves every weight by about lr at first)."""
    fused = optimizer.defaults.get("fused")  # the fused kernels keep `step` beside the parameter
    for name, p in model.named_parameters():
        if name in state:
            optimizer.state[p] = {k: v.to(p.device if fused or k != "step" else v.device).clone()
                                  for k, v in state[name].items()}

