"""Early-bird tickets: draw them from slimming coefficients, decide when one has emerged
(EarlyBERT, Chen et al., ACL 2021, sec. 3.2), and look at them.

    draw_ticket     prune the smallest |coefficient|: heads layer-wise, FFN neurons globally
    random_ticket   the same numbers pruned, units chosen at random (the control)
    random_ticket_like  random units with a drawn ticket's per-layer sizes (the second control)
    EarlyBird       the early-bird rule (You et al., ICLR 2020): stop searching once the
                    masks the coefficients give stop moving (mask distance < epsilon)

slim.Search runs the rule during a search; prune.py rebuilds the smaller BERT a ticket describes.
A ticket's indices refer to the model it is applied to (a rebuilt model can be pruned again).
`python ticket.py show|apply|compare|distances` looks at, applies and compares ticket files and
draws a finished search's mask distances (see main).
"""
import argparse
import dataclasses
import json
import math
import os
import sys
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import figures
import prune
from checkpoint import atomic, read_config, read_json, short, write_json
from model import Bert, count_parameters, flops_per_sequence


@dataclass
class Ticket:
    """Which heads and FFN neurons survive, per layer (sorted indices), and where from."""
    heads: list[list[int]]       # kept head indices, per layer
    ffn: list[list[int]]         # kept FFN neuron indices, per layer
    full_heads: list[int]        # per-layer sizes of the model the ticket was drawn from
    full_ffn: list[int]
    head_ratio: float            # the pruned fractions asked for
    ffn_ratio: float
    kind: str = "earlybird"      # "earlybird" (the rule fired), "fixed-step" (--draw-step), "last-step" (the
                                 # search ended before the rule fired), "random", "random-per-layer", "anti" or "full"
    step: int | None = None      # search step it was drawn at
    history: list[dict] = field(default_factory=list)  # EarlyBird.history: the mask distances
    ffn_multiple: int = 1        # each layer's kept FFN neurons rounded up to a multiple of it

    def save(self, path: str):
        """Human-readable JSON, one line per layer, written atomically."""
        lines = []
        for key, value in asdict(self).items():
            text = json.dumps(value)
            if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
                text = "[\n    " + ",\n    ".join(json.dumps(v) for v in value) + "\n  ]"
            lines.append(f"  {json.dumps(key)}: {text}")
        with atomic(path) as tmp, open(tmp, "w") as f:
            f.write("{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, path: str) -> "Ticket":
        """A ticket file, checked for shape (not yet against a model: check_fits)."""
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such ticket file; draw one with the search phase first")
        d = read_json(path, "ticket file")
        try:
            ticket = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
            assert all(map(_is_int_list, ticket.heads + ticket.ffn + [ticket.full_heads, ticket.full_ffn])), \
                "indices and sizes must be lists of integers"
        except (TypeError, AssertionError) as e:
            raise ValueError(f"{path}: not a valid ticket file ({short(e)})") from None
        ticket.check_fits(None, path)
        return ticket

    def check_fits(self, config, path: str, where: str = "the checkpoint"):
        """Raise a one-line ValueError naming `path` (the ticket's file) unless the lists are
        consistent and, given a config, drawn from a model with its per-layer sizes (`where` names it)."""
        n = len(self.full_heads)
        if not len(self.heads) == len(self.ffn) == len(self.full_ffn) == n:
            raise ValueError(f"{path}: its heads, ffn, full_heads and full_ffn lists differ in "
                             "length (one entry per layer each); the file is damaged, draw it again")
        if config is not None and n != config.num_hidden_layers:
            raise ValueError(f"{path}: drawn from a model with {n} layers, but {where} has {config.num_hidden_layers}")
        for l in range(n):
            sizes = (config.heads(l), config.ffn(l)) if config is not None else (self.full_heads[l], self.full_ffn[l])
            for what, full, size, kept in (("heads", self.full_heads[l], sizes[0], self.heads[l]),
                                           ("FFN neurons", self.full_ffn[l], sizes[1], self.ffn[l])):
                if full != size:
                    raise ValueError(f"{path}: layer {l} had {full} {what} when the ticket was "
                                     f"drawn, but {where}'s layer {l} has {size}; use the model it was drawn from")
                if not kept:
                    raise ValueError(f"{path}: layer {l} keeps no {what}; every layer must keep one")
                if len(set(kept)) != len(kept):
                    raise ValueError(f"{path}: layer {l} lists some {what} twice")
                if not all(0 <= i < size for i in kept):
                    raise ValueError(f"{path}: layer {l} keeps {what} {kept}, "
                                     f"but the layer has only {size} (indices 0..{size - 1})")

    def summary(self) -> dict:
        """What a run reports of its ticket."""
        return {"drawn_at": self.step, "rule": self.kind,
                "kept_heads": sum(map(len, self.heads)), "total_heads": sum(self.full_heads),
                "kept_ffn": sum(map(len, self.ffn)), "total_ffn": sum(self.full_ffn)}


def _is_int_list(xs) -> bool:
    return isinstance(xs, list) and all(type(x) is int for x in xs)


# ----------------------------------------------------------------------------- drawing

def _largest(magnitudes: np.ndarray, n_keep: int) -> list[int]:
    """Indices of the n_keep largest magnitudes, sorted. The sort is stable, so among equal
    magnitudes the lower index ranks lower and is pruned first: a draw is deterministic."""
    order = np.argsort(magnitudes, kind="stable")  # ascending
    return sorted(order[len(order) - n_keep:].tolist())


def draw_ticket(head_coefs, ffn_coefs, head_ratio: float = 1 / 3, ffn_ratio: float = 0.4,
                ffn_multiple: int = 1, *, kind: str = "earlybird", step: int | None = None,
                history: list | None = None) -> Ticket:
    """Prune the units with the smallest coefficient magnitudes (EarlyBERT sec. 3.2).

    head_coefs, ffn_coefs: one 1-D tensor per layer (slim.coefficients gives them).
    Heads are pruned layer-wise: round(head_ratio * n_heads) in every layer (official
    default 1/3: 4 of 12). FFN neurons are pruned globally: the round(ffn_ratio * total)
    smallest over all layers (official default 0.4), so layers end with different widths.
    Every layer keeps at least one head and one neuron (its largest-|c| ones).

    Departs from the official code, which ranks the signed coefficient values
    (np.quantile): a coefficient of -0.9 scales its unit as strongly as +0.9, so we rank
    magnitudes, as network slimming does.

    ffn_multiple > 1 (for GPU speed, not in the paper) rounds each layer's kept neurons up to a
    multiple of it (the next-largest |c|, at most the full width); the ticket records ffn_ratio.
    """
    for name, ratio in (("head_ratio", head_ratio), ("ffn_ratio", ffn_ratio)):
        if not 0 <= ratio < 1:
            raise ValueError(f"{name}={ratio}: a pruning ratio is the fraction of units to prune, in [0, 1)")
    assert ffn_multiple >= 1 and len(head_coefs) == len(ffn_coefs)
    head_mags, ffn_mags = ([torch.as_tensor(c).detach().abs().double().cpu().numpy() for c in coefs]
                           for coefs in (head_coefs, ffn_coefs))
    heads = [_largest(m, len(m) - min(round(head_ratio * len(m)), len(m) - 1)) for m in head_mags]

    # One global threshold: rank all neurons together, in layer-major order so that ties
    # break by (layer, index). Within a layer this order is the layer's own stable order,
    # so "kept under the global threshold" = "the layer's n_keep largest".
    everything = np.concatenate(ffn_mags)
    layer_of = np.repeat(np.arange(len(ffn_mags)), [len(m) for m in ffn_mags])
    n_prune = round(ffn_ratio * len(everything))
    pruned_per_layer = np.bincount(layer_of[np.argsort(everything, kind="stable")[:n_prune]],
                                   minlength=len(ffn_mags))
    n_keep = [max(1, len(m) - int(n)) for m, n in zip(ffn_mags, pruned_per_layer)]
    ffn = [_largest(m, min(len(m), math.ceil(n / ffn_multiple) * ffn_multiple)) for m, n in zip(ffn_mags, n_keep)]
    return Ticket(heads, ffn, [len(m) for m in head_mags], [len(m) for m in ffn_mags],
                  head_ratio, ffn_ratio, kind, step, list(history or []), ffn_multiple)


def random_ticket(full_heads: list[int], full_ffn: list[int], head_ratio: float = 1 / 3,
                  ffn_ratio: float = 0.4, seed: int = 0, ffn_multiple: int = 1) -> Ticket:
    """The control (EarlyBERT's random-pruning baseline): draw_ticket on seeded random scores, so as
    many units are pruned, by the same rules (minimum per layer, ffn_multiple), but chosen at random."""
    g = torch.Generator().manual_seed(seed)
    head_scores, ffn_scores = ([torch.rand(n, generator=g) for n in sizes] for sizes in (full_heads, full_ffn))
    return draw_ticket(head_scores, ffn_scores, head_ratio, ffn_ratio, ffn_multiple, kind="random")


def ticket_of_sizes(like: Ticket, head_scores, ffn_scores, kind: str) -> Ticket:
    """A ticket with `like`'s per-layer sizes (as many heads and FFN neurons kept in each layer),
    keeping in each layer the units of the largest scores (one 1-D array per layer each)."""
    keep = lambda scores, kept: [_largest(np.asarray(s, dtype=float), len(k)) for s, k in zip(scores, kept)]
    return dataclasses.replace(like, heads=keep(head_scores, like.heads), ffn=keep(ffn_scores, like.ffn), kind=kind,
                               history=[])


def random_ticket_like(like: Ticket, seed: int = 0) -> Ticket:
    """The second control: units chosen at random with `like`'s per-layer sizes. random_ticket
    prunes as many units but lets a global random draw set the FFN widths; this one keeps the
    drawn ticket's widths, so drawn - random splits into "which units" (drawn - this) and "how
    many in each layer" (this - random_ticket)."""
    g = torch.Generator().manual_seed(seed)
    scores = lambda sizes: [torch.rand(n, generator=g).numpy() for n in sizes]
    return ticket_of_sizes(like, scores(like.full_heads), scores(like.full_ffn), "random-per-layer")


def full_ticket(config) -> Ticket:
    """The ticket that keeps every unit of a model: rebuilding with it only folds the coefficients in."""
    heads, ffn = ([size(l) for l in range(config.num_hidden_layers)] for size in (config.heads, config.ffn))
    return Ticket([list(range(h)) for h in heads], [list(range(f)) for f in ffn], heads, ffn, 0.0, 0.0, "full")


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
    """Normalised Hamming distance between two keep-masks (Early-Bird, You et al. 2020;
    EarlyBERT sec. 3.2): the fraction of units whose keep/prune bit differs."""
    assert a.shape == b.shape, "masks over different sets of units"
    return (a != b).sum().item() / a.numel()


class EarlyBird:
    """The early-bird rule (You et al., ICLR 2020), as EarlyBERT sec. 3.2 uses it.

    Feed it the current masks every few steps. It keeps the last k in a FIFO; once it has
    k, it computes for heads and for FFN neurons separately the largest distance between
    the newest mask and each of the k - 1 older ones, and fires when both are below
    epsilon (k = 5 and epsilon = 0.1 are Early-Bird's defaults).

    Departs from the official EarlyBERT code, which draws at a fixed step instead
    (`slimming_coef_step`): the rule stops the search as soon as the ticket has stopped
    changing, which is the point of an early-bird ticket; the fixed step stays an option
    (slim.Search's draw_step). With coefficients initialised at 1.0 the very first mask is all
    ties, broken by index, which says nothing: record the first mask after some training.
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
    d = np.zeros((2, len(masks), len(masks)))
    for i, j in zip(*np.triu_indices(len(masks), 1)):
        for kind in (0, 1):
            d[kind, i, j] = d[kind, j, i] = mask_distance(masks[i][kind + 1], masks[j][kind + 1])
    return d


def save_mask_distances(early_bird: EarlyBird, folder: str, draw_step: int | None = None) -> str | None:
    """folder/mask_distances.json (the steps, both distance matrices, the rule's k and epsilon, the
    draw step) and, with matplotlib, folder/mask_distances.png. Returns the picture's path, or None."""
    d = distance_matrix(early_bird.masks)
    distances = {"steps": [s for s, _, _ in early_bird.masks], "head_distance": d[0].tolist(),
                 "ffn_distance": d[1].tolist(), "k": early_bird.k, "epsilon": early_bird.epsilon, "drawn_at": draw_step}
    write_json(distances, os.path.join(folder, "mask_distances.json"), indent=None)
    try:
        return figures.plot_distances(distances, os.path.join(folder, "mask_distances.png"))
    except ImportError:  # matplotlib is optional: `python ticket.py distances FOLDER` draws it later
        return None


# ----------------------------------------------------------------------------- command line

def parameters_and_flops(config, seq_len: int) -> tuple[int, int]:
    """Parameters of the encoder (embeddings + layers) a config describes, per-layer sizes and
    all, and its training FLOPs per token at seq_len (model.flops_per_sequence). The MLM or
    task head is left out: a ticket does not change it."""
    with torch.device("meta"):  # shapes only, nothing allocated
        params = count_parameters(Bert(config))
    return params, flops_per_sequence(config, seq_len, n_predictions=0) // seq_len


def show(path: str, model_dir: str | None = None, seq_len: int | None = None, plot: str | None = None) -> str:
    """What a ticket keeps, per layer and in total; given the model's folder, what that saves, in
    FLOPs at seq_len: by default the length the run beside the ticket trained at, else 128."""
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"--seq-len {seq_len}: a sequence length is at least 1")
    t = Ticket.load(path)
    if seq_len is None:
        beside = os.path.join(os.path.dirname(path), "train_config.json")
        seq_len = read_json(beside, "train config").get("max_len", 128) if os.path.isfile(beside) else 128
    config = read_config(model_dir) if model_dir else None
    if config is not None:
        t.check_fits(config, path, os.path.join(model_dir, "config.json"))
    pct = lambda a, b: f"{a}/{b} ({a / b:.0%})"
    lines = [f"{path}: {_describe(t)}; pruning ratios: heads {t.head_ratio:.3g}, FFN {t.ffn_ratio:.3g}",
             "layer  heads kept              FFN width"]
    lines += [f"{l:5}  {f'{len(h)}/{n}':>5}  {' '.join(map(str, h)):<17} {pct(len(f), m)}"
              for l, (h, n, f, m) in enumerate(zip(t.heads, t.full_heads, t.ffn, t.full_ffn))]
    s = t.summary()
    lines.append(f"total  heads {pct(s['kept_heads'], s['total_heads'])}, "
                 f"FFN neurons {pct(s['kept_ffn'], s['total_ffn'])}")
    if config is None:
        lines.append("(parameters and FLOPs depend on the hidden size and vocabulary, which a ticket does not "
                     "record: add --model FOLDER)")
    else:
        (p, fl), (p0, fl0) = (parameters_and_flops(c, seq_len) for c in (config.pruned(t), config))
        lines.append(f"parameters (embeddings + encoder): {p / 1e6:.2f}M of {p0 / 1e6:.2f}M ({p / p0:.0%}); training "
                     f"FLOPs per token at length {seq_len}: {fl / 1e6:.2f}M of {fl0 / 1e6:.2f}M ({fl / fl0:.0%})")
    if plot:
        lines.append(f"picture -> {figures.plot_ticket(t, plot)}")
    return "\n".join(lines)


def _describe(t: Ticket) -> str:
    return f"{t.kind} ticket" + (f", drawn at step {t.step}" if t.step is not None else "")


def compare(a_path: str, b_path: str) -> str:
    """The mask distance between two tickets of one model, per layer and over all layers."""
    a, b = Ticket.load(a_path), Ticket.load(b_path)
    if (a.full_heads, a.full_ffn) != (b.full_heads, b.full_ffn):
        raise ValueError(f"{b_path}: drawn from a model with heads {b.full_heads} and FFN widths {b.full_ffn}, "
                         f"but {a_path} from one with {a.full_heads} and {a.full_ffn}; compare tickets of one model")
    (ha, fa), (hb, fb) = ticket_masks(a), ticket_masks(b)
    layers = zip(ha.split(a.full_heads), hb.split(a.full_heads), fa.split(a.full_ffn), fb.split(a.full_ffn))
    return "\n".join([f"{a_path} ({_describe(a)}) vs {b_path} ({_describe(b)})",
                      "mask distance: the fraction of units one ticket keeps and the other prunes",
                      "layer   heads     FFN"]
                     + [f"{l:5}   {mask_distance(h1, h2):.3f}   {mask_distance(f1, f2):.3f}"
                        for l, (h1, h2, f1, f2) in enumerate(layers)]
                     + [f"all     {mask_distance(ha, hb):.3f}   {mask_distance(fa, fb):.3f}"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ticket.py", description="Look at, apply and compare EarlyBERT tickets, "
                                     "and draw a search's mask distances.")
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("show", help="what a ticket keeps, per layer and in total")
    p.add_argument("ticket")
    p.add_argument("--model", help="the checkpoint folder it fits: adds parameters and FLOPs")
    p.add_argument("--seq-len", type=int, help="sequence length for the FLOPs (default: the --max-len of the "
                   "run beside the ticket, else 128)")
    p.add_argument("--plot", help="also draw the kept units into this PNG (needs matplotlib)")
    p.set_defaults(run=lambda a: show(a.ticket, a.model, a.seq_len, a.plot))
    p = sub.add_parser("apply", help="rebuild a checkpoint folder into the smaller model of the ticket")
    p.add_argument("ticket")
    p.add_argument("--model", required=True, help="checkpoint folder (config.json, vocab.txt, weights)")
    p.add_argument("--out", required=True, help="folder for the smaller model; must be new or empty")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.set_defaults(run=lambda a: prune.apply_ticket(Ticket.load(a.ticket), a.ticket, a.model, a.out, a.force))
    p = sub.add_parser("compare", help="mask distance between two tickets of one model")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(run=lambda a: compare(a.a, a.b))
    p = sub.add_parser("distances", help="draw a finished search's mask_distances.png from its mask_distances.json")
    p.add_argument("folder", help="the search's folder, e.g. out/search")
    p.add_argument("--out", help="the PNG to write (default: FOLDER/mask_distances.png)")
    p.set_defaults(run=lambda a: figures.draw_distances(a.folder, a.out))
    args = parser.parse_args(argv)
    print(args.run(args))


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")
