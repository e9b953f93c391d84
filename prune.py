"""The structured rebuild (EarlyBERT, Chen et al., ACL 2021, sec. 3.3): remove the heads and
FFN neurons a ticket (ticket.Ticket) prunes, physically, so the efficient phase trains a smaller
BERT instead of a masked one.

    slice_state         the kept units' entries of a state dict (weights, AdamW moments)
    fold_coefficients   the surviving slimming coefficients multiplied into the weights
    rebuild             the smaller model: slice_state, then fold_coefficients
    apply_ticket        the same for a checkpoint folder on disk (`python ticket.py apply`)

The rebuilt model's outputs equal the full model's with the pruned units' coefficients
set to zero (tests/test_prune.py checks it), and its config records each layer's heads
and FFN width (BertConfig.pruned), so the checkpoint loads on its own.
"""
import os
import re
import shutil

import torch
import torch.nn as nn

from checkpoint import (atomic, from_reference_name, read_config, read_weights, to_reference_name, write_json,
                        write_safetensors)
from model import Bert


# layers.L.<producer> weight/bias: kept units' output rows; layers.L.<consumer>.weight: input columns
_SLICED = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:(attn\.(?:query|key|value)|ffn\.up)\.(?:weight|bias)"
                     r"|(attn\.out|ffn\.down)\.weight)$")


def slice_state(tensors: dict, ticket) -> dict:
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
def rebuild(model: nn.Module, ticket) -> nn.Module:
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
    ticket.check_fits(model.config, "ticket")
    weight = next(model.parameters())
    small = type(model)(model.config.pruned(ticket)).to(device=weight.device, dtype=weight.dtype)
    small.load_state_dict(fold_coefficients(slice_state(model.state_dict(), ticket), model, ticket))  # strict
    return small.train(model.training)


@torch.no_grad()
def fold_coefficients(state: dict, model: nn.Module, ticket, power: int = 1) -> dict:
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


def adamw_state(model: nn.Module, optimizer: torch.optim.Optimizer, ticket) -> dict:
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


def apply_ticket(ticket, path: str, model_dir: str, out_dir: str, force: bool = False) -> str:
    """Rebuild a checkpoint folder (ours or a downloaded BERT) into the smaller model the ticket
    (read from `path`) describes. It slices the weight file itself (slice_state), so every
    tensor the folder holds is kept: pooler, MLM head, a task head. Everything is checked before
    anything is written."""
    config, config_path = read_config(model_dir), os.path.join(model_dir, "config.json")
    ticket.check_fits(config, path, config_path)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not force:
        raise ValueError(f"{out_dir}: already exists and is not empty; choose another --out or add --force")
    weights, weights_path = read_weights(model_dir)
    state = {from_reference_name(k): v for k, v in weights.items()}
    with torch.device("meta"):  # the shapes config.json promises, without allocating anything
        expected = {"bert." + k: v.shape for k, v in Bert(config).state_dict().items()}
    for name, v in state.items():
        if name in expected and v.shape != expected[name]:
            raise ValueError(f"{weights_path}: weight {to_reference_name(name)} has shape {tuple(v.shape)}, "
                             f"but {config_path} gives {tuple(expected[name])}")
    state = slice_state(state, ticket)
    os.makedirs(out_dir, exist_ok=True)
    with atomic(os.path.join(out_dir, "model.safetensors")) as tmp:
        write_safetensors({to_reference_name(k): v for k, v in state.items()}, tmp)
    write_json(config.pruned(ticket).to_dict(), os.path.join(out_dir, "config.json"))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if os.path.isfile(os.path.join(model_dir, name)) and not os.path.samefile(model_dir, out_dir):
            with atomic(os.path.join(out_dir, name)) as tmp:
                shutil.copyfile(os.path.join(model_dir, name), tmp)
    n, n0 = sum(v.numel() for v in state.values()), sum(v.numel() for v in weights.values())
    return f"{out_dir}: {n / 1e6:.2f}M of {n0 / 1e6:.2f}M weights (load_pretrained and finetune.py --model load it)"
