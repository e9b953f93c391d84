"""Early-bird tickets: draw them from slimming coefficients, decide when one has
emerged, and rebuild the physically smaller BERT they describe.

EarlyBERT (Chen et al., 2021), sec. 3: the ticket-drawing and efficient-training stages.

    draw_ticket     rank heads (layer-wise) and FFN neurons (globally) by |coefficient|,
                    prune the smallest                                  -> Ticket
    random_ticket   the same numbers pruned, units chosen at random     -> Ticket (control)
    EarlyBird       the early-bird rule (You et al., ICLR 2020): stop searching once the
                    masks the coefficients give stop moving (mask distance < epsilon)
    rebuild         a smaller model of the same class: the ticket's heads and neurons
                    removed from the weights, surviving coefficients folded in

A ticket's indices always refer to the model it is applied to, so a rebuilt model can be
pruned again by a ticket drawn from it.
"""
import dataclasses
import json
import math
import os
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn


@dataclass
class Ticket:
    """Which heads and FFN neurons survive, per layer (sorted indices), and where from."""
    heads: list[list[int]]       # kept head indices, per layer
    ffn: list[list[int]]         # kept FFN neuron indices, per layer
    full_heads: list[int]        # per-layer sizes of the model the ticket was drawn from
    full_ffn: list[int]
    head_ratio: float            # the pruned fractions asked for
    ffn_ratio: float
    kind: str = "earlybird"      # "earlybird", "fixed-step" or "random"
    step: int | None = None      # search step it was drawn at
    history: list[dict] = field(default_factory=list)  # EarlyBird.history: the mask distances

    def save(self, path: str):
        """Human-readable JSON, one line per layer; written to a temporary name and
        renamed, so a crash never leaves half a ticket."""
        lines = []
        for key, value in asdict(self).items():
            if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
                value = "[\n    " + ",\n    ".join(json.dumps(v) for v in value) + "\n  ]"
            else:
                value = json.dumps(value)
            lines.append(f"  {json.dumps(key)}: {value}")
        with open(path + ".tmp", "w") as f:
            f.write("{\n" + ",\n".join(lines) + "\n}\n")
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path: str) -> "Ticket":
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such ticket file; draw one with the search phase first")
        try:
            with open(path) as f:
                d = json.load(f)
            ticket = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
            assert all(map(_is_int_list, ticket.heads + ticket.ffn)), \
                "indices must be lists of integers, one list per layer"
            assert _is_int_list(ticket.full_heads) and _is_int_list(ticket.full_ffn), \
                "sizes must be lists of integers"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AssertionError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: not a valid ticket file ({msg})") from None
        return ticket


def _is_int_list(xs) -> bool:
    return isinstance(xs, list) and all(type(x) is int for x in xs)


# ----------------------------------------------------------------------------- drawing

def _check_ratio(name: str, ratio: float):
    if not 0 <= ratio < 1:
        raise ValueError(f"{name}={ratio}: a pruning ratio is the fraction of units to prune, in [0, 1)")


def _largest(magnitudes: np.ndarray, n_keep: int) -> list[int]:
    """Indices of the n_keep largest magnitudes, sorted. The sort is stable, so among equal
    magnitudes the lower index ranks lower and is pruned first: a draw is deterministic."""
    order = np.argsort(magnitudes, kind="stable")  # ascending
    return sorted(order[len(order) - n_keep:].tolist())


def draw_ticket(head_coefs, ffn_coefs, head_ratio: float = 1 / 3, ffn_ratio: float = 0.4,
                ffn_multiple: int = 1, *, kind: str = "earlybird", step: int | None = None,
                history: list | None = None) -> Ticket:
    """Prune the units with the smallest coefficient magnitudes (EarlyBERT's ticket-drawing stage).

    head_coefs, ffn_coefs: one 1-D tensor per layer (slim.coefficients gives them).
    Heads are pruned layer-wise: round(head_ratio * n_heads) in every layer (official
    default 1/3: 4 of 12). FFN neurons are pruned globally: the round(ffn_ratio * total)
    smallest over all layers (official default 0.4), so layers end with different widths.
    Every layer keeps at least one head and one neuron (its largest-|c| ones).

    Departs from the official code, which ranks the signed coefficient values
    (np.quantile): a coefficient of -0.9 scales its unit as strongly as +0.9, so we rank
    magnitudes, as network slimming does.

    ffn_multiple > 1 is a GPU-speed option, not in the paper: each layer's kept neuron
    count is rounded up to a multiple of it (keeping the next-largest |c|, at most the
    layer's full width), since matrix multiplies are fastest on widths that are multiples
    of 64 or so. The ticket still records the ffn_ratio asked for.
    """
    _check_ratio("head_ratio", head_ratio)
    _check_ratio("ffn_ratio", ffn_ratio)
    assert ffn_multiple >= 1 and len(head_coefs) == len(ffn_coefs)
    head_mags = [torch.as_tensor(c).detach().abs().double().cpu().numpy() for c in head_coefs]
    ffn_mags = [torch.as_tensor(c).detach().abs().double().cpu().numpy() for c in ffn_coefs]

    heads = []
    for m in head_mags:
        n_prune = min(round(head_ratio * len(m)), len(m) - 1)
        heads.append(_largest(m, len(m) - n_prune))

    # One global threshold: rank all neurons together, in layer-major order so that ties
    # break by (layer, index). Within a layer this order is the layer's own stable order,
    # so "kept under the global threshold" = "the layer's n_keep largest".
    everything = np.concatenate(ffn_mags)
    layer_of = np.repeat(np.arange(len(ffn_mags)), [len(m) for m in ffn_mags])
    n_prune = round(ffn_ratio * len(everything))
    pruned_per_layer = np.bincount(layer_of[np.argsort(everything, kind="stable")[:n_prune]],
                                   minlength=len(ffn_mags))
    ffn = []
    for m, n_pruned in zip(ffn_mags, pruned_per_layer):
        n_keep = max(1, len(m) - int(n_pruned))
        n_keep = min(len(m), math.ceil(n_keep / ffn_multiple) * ffn_multiple)
        ffn.append(_largest(m, n_keep))

    return Ticket(heads, ffn, [len(m) for m in head_mags], [len(m) for m in ffn_mags],
                  head_ratio, ffn_ratio, kind, step, list(history or []))


def random_ticket(full_heads: list[int], full_ffn: list[int], head_ratio: float = 1 / 3,
                  ffn_ratio: float = 0.4, seed: int = 0, ffn_multiple: int = 1) -> Ticket:
    """The control (EarlyBERT's random-pruning baseline): as many heads pruned per layer and as many FFN
    neurons pruned overall as draw_ticket would, but chosen at random. It is draw_ticket
    on seeded random scores, so the same rules (minimum per layer, ffn_multiple) hold."""
    g = torch.Generator().manual_seed(seed)
    head_scores = [torch.rand(n, generator=g) for n in full_heads]
    ffn_scores = [torch.rand(n, generator=g) for n in full_ffn]
    return draw_ticket(head_scores, ffn_scores, head_ratio, ffn_ratio, ffn_multiple, kind="random")


def ticket_masks(ticket: Ticket) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat keep-masks (True = kept) over all heads and over all FFN neurons, layer-major."""
    def flat(kept, sizes):
        masks = [torch.zeros(n, dtype=torch.bool) for n in sizes]
        for mask, idx in zip(masks, kept):
            mask[idx] = True
        return torch.cat(masks)
    return flat(ticket.heads, ticket.full_heads), flat(ticket.ffn, ticket.full_ffn)


def current_masks(head_coefs, ffn_coefs, head_ratio: float = 1 / 3, ffn_ratio: float = 0.4):
    """The masks the coefficients would give if the ticket were drawn now."""
    return ticket_masks(draw_ticket(head_coefs, ffn_coefs, head_ratio, ffn_ratio))


# ----------------------------------------------------------------------------- the early-bird rule

def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance: the fraction of units whose keep/prune bit differs."""
    assert a.shape == b.shape, "masks over different sets of units"
    return (a != b).sum().item() / a.numel()


class EarlyBird:
    """The early-bird rule (You et al., ICLR 2020), as EarlyBERT uses it.

    Feed it the current masks every few steps. It keeps the last k in a FIFO; once it has
    k, it computes for heads and for FFN neurons separately the largest distance between
    the newest mask and each of the k - 1 older ones, and fires when both are below
    epsilon (k = 5 and epsilon = 0.1 are Early-Bird's defaults).

    Departs from the official EarlyBERT code, which draws at a fixed step instead
    (`slimming_coef_step`); we keep that as an option in the training loop.
    With coefficients initialised at 1.0 the very first mask is all ties, broken by
    index, which says nothing: record the first mask after some training.
    """

    def __init__(self, k: int = 5, epsilon: float = 0.1):
        if k < 2:
            raise ValueError(f"early-bird k={k}: the rule compares the newest mask with the k - 1 "
                             "before it, so k must be at least 2")
        self.k, self.epsilon = k, epsilon
        self.queue = deque(maxlen=k)  # (head_mask, ffn_mask), oldest first
        self.masks = []               # every mask recorded: (step, head_mask, ffn_mask)
        self.history = []             # {step, head_distance, ffn_distance} per update

    def update(self, head_mask: torch.Tensor, ffn_mask: torch.Tensor, step: int) -> bool:
        """Record the masks at `step`; True when the ticket has emerged."""
        # copies: the caller may reuse its tensors, and GPU memory is not needed for this
        head_mask, ffn_mask = (m.detach().to("cpu", torch.bool, copy=True) for m in (head_mask, ffn_mask))
        self.queue.append((head_mask, ffn_mask))
        self.masks.append((step, head_mask, ffn_mask))
        head_d = ffn_d = None
        if len(self.queue) == self.k:
            older = list(self.queue)[:-1]
            head_d = max(mask_distance(head_mask, h) for h, _ in older)
            ffn_d = max(mask_distance(ffn_mask, f) for _, f in older)
        self.history.append({"step": step, "head_distance": head_d, "ffn_distance": ffn_d})
        return head_d is not None and head_d < self.epsilon and ffn_d < self.epsilon

    def state_dict(self) -> dict:
        """Everything a resumed search needs to go on exactly (masks are small bool tensors)."""
        return {"k": self.k, "epsilon": self.epsilon, "masks": list(self.masks), "history": list(self.history)}

    def load_state_dict(self, state: dict):
        self.k, self.epsilon = state["k"], state["epsilon"]
        self.masks, self.history = list(state["masks"]), list(state["history"])
        self.queue = deque(((h, f) for _, h, f in self.masks[-self.k:]), maxlen=self.k)


def distance_matrix(masks: list[tuple]) -> np.ndarray:
    """Pairwise mask distances between recorded masks (EarlyBird.masks): a (2, n, n) array,
    [0] over heads and [1] over FFN neurons (the figure the Early-Bird paper draws)."""
    n = len(masks)
    d = np.zeros((2, n, n))
    for i in range(n):
        for j in range(i + 1, n):
            for kind in (0, 1):
                d[kind, i, j] = d[kind, j, i] = mask_distance(masks[i][kind + 1], masks[j][kind + 1])
    return d


def plot_distances(early_bird: EarlyBird, path: str):
    """Save the mask-distance matrices (heads, FFN) and the distances over steps to `path`.
    Returns the path, or None when matplotlib is not installed (it is optional)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        return None
    if not early_bird.masks:
        return None
    steps = [s for s, _, _ in early_bird.masks]
    d = distance_matrix(early_bird.masks)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, matrix, title in zip(axes, d, ("heads", "FFN neurons")):
        image = ax.imshow(matrix, cmap="viridis", vmin=0)
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
        ax.set_xticks(ticks, [steps[t] for t in ticks])
        ax.set_yticks(ticks, [steps[t] for t in ticks])
        ax.set_title(f"mask distance, {title}")
        ax.set_xlabel("step")
        fig.colorbar(image, ax=ax)
    for key, label in (("head_distance", "heads"), ("ffn_distance", "FFN neurons")):
        points = [(h["step"], h[key]) for h in early_bird.history if h[key] is not None]
        axes[2].plot([s for s, _ in points], [v for _, v in points], marker="o", label=label)
    axes[2].axhline(early_bird.epsilon, color="gray", linestyle="--", label="epsilon")
    axes[2].set_title(f"largest distance to the last {early_bird.k - 1} masks")
    axes[2].set_xlabel("step")
    axes[2].legend()
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------- rebuild

def check_ticket_fits(ticket: Ticket, config, ticket_path: str):
    """Raise a one-line ValueError naming `ticket_path` unless the ticket was drawn from a
    model with the config's per-layer sizes and its indices are valid for them."""
    n, n_ticket = config.num_hidden_layers, len(ticket.full_heads)
    if not len(ticket.heads) == len(ticket.ffn) == len(ticket.full_ffn) == n_ticket:
        raise ValueError(f"{ticket_path}: its heads, ffn, full_heads and full_ffn lists differ in "
                         "length (one entry per layer each); the file is damaged, draw it again")
    if n_ticket != n:
        raise ValueError(f"{ticket_path}: drawn from a model with {n_ticket} layers, "
                         f"but the checkpoint has {n}")
    for l in range(n):
        for what, full, size, kept in (("heads", ticket.full_heads[l], config.heads(l), ticket.heads[l]),
                                       ("FFN neurons", ticket.full_ffn[l], config.ffn(l), ticket.ffn[l])):
            if full != size:
                raise ValueError(f"{ticket_path}: layer {l} had {full} {what} when the ticket was "
                                 f"drawn, but the checkpoint's layer {l} has {size}; "
                                 "use the model it was drawn from")
            if not kept:
                raise ValueError(f"{ticket_path}: layer {l} keeps no {what}; every layer must keep one")
            if len(set(kept)) != len(kept):
                raise ValueError(f"{ticket_path}: layer {l} lists some {what} twice")
            if not all(0 <= i < size for i in kept):
                raise ValueError(f"{ticket_path}: layer {l} keeps {what} {kept}, "
                                 f"but the layer has only {size} (indices 0..{size - 1})")


@torch.no_grad()
def rebuild(model: nn.Module, ticket: Ticket) -> nn.Module:
    """A physically smaller copy of `model` (same class) keeping only the ticket's heads
    and neurons (EarlyBERT's efficient-training stage). Per layer, with kept heads H and kept neurons N:
      query/key/value: the output rows (and bias entries) of the heads in H
      attention out:   the matching input columns, each scaled by its head's coefficient
      FFN up:          the output rows (and bias entries) in N
      FFN down:        the input columns in N, each scaled by its neuron's coefficient
    Folding the coefficients in leaves the rebuilt model without any, and makes its
    outputs equal to `model`'s with the pruned units' coefficients set to zero. A model
    without coefficients counts as all ones. Everything else (embeddings, LayerNorms,
    the out/down biases, task heads) is copied unchanged; `model` itself is not modified.
    """
    c = model.config
    check_ticket_fits(ticket, c, "ticket")
    config = dataclasses.replace(c, heads_per_layer=[len(h) for h in ticket.heads],
                                 ffn_per_layer=[len(n) for n in ticket.ffn])
    weight = next(model.parameters())
    small = type(model)(config).to(device=weight.device, dtype=weight.dtype)

    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("head_coef", "ffn_coef"))}
    prefix = "bert." if hasattr(model, "bert") else ""
    for l, layer in enumerate(getattr(model, "bert", model).layers):
        attn, ffn, p = layer.attn, layer.ffn, f"{prefix}layers.{l}."
        heads = torch.tensor(ticket.heads[l], device=weight.device)
        neurons = torch.tensor(ticket.ffn[l], device=weight.device)
        rows = (heads[:, None] * c.head_dim + torch.arange(c.head_dim, device=weight.device)).flatten()
        for proj in ("query", "key", "value"):
            state[p + f"attn.{proj}.weight"] = getattr(attn, proj).weight[rows]
            state[p + f"attn.{proj}.bias"] = getattr(attn, proj).bias[rows]
        head_coef = torch.ones(attn.n_heads) if attn.head_coef is None else attn.head_coef
        scale = head_coef.to(weight.device, torch.float32)[heads].repeat_interleave(c.head_dim)
        # (hidden, kept heads * head_dim): each head's columns times its coefficient
        state[p + "attn.out.weight"] = attn.out.weight[:, rows].float() * scale
        state[p + "ffn.up.weight"] = ffn.up.weight[neurons]
        state[p + "ffn.up.bias"] = ffn.up.bias[neurons]
        ffn_coef = torch.ones(ffn.up.out_features) if ffn.ffn_coef is None else ffn.ffn_coef
        scale = ffn_coef.to(weight.device, torch.float32)[neurons]
        state[p + "ffn.down.weight"] = ffn.down.weight[:, neurons].float() * scale  # (hidden, kept neurons)
    small.load_state_dict(state)  # strict: every weight of the smaller model is accounted for
    return small.train(model.training)
