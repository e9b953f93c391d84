"""The figures, drawn with matplotlib, which is optional: without it a run writes its numbers
(JSON) and says how to draw them later. No pyplot: no global state, no display needed.

    plot_distances   the early-bird rule's mask distances (the figure of the Early-Bird paper)
    plot_ticket      which heads a ticket keeps and its FFN widths, per layer
    plot_curves      reproduce.py's held-out MLM curves against training seconds
"""
import os

import numpy as np

from checkpoint import atomic, read_json


def _save(fig, path: str, dpi: int) -> str:
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def read_distances(folder: str) -> dict:
    """A finished search's mask_distances.json; an older one without the rule's k, epsilon and draw
    step takes them from the train_config.json and ticket.json beside it."""
    path = os.path.join(folder, "mask_distances.json")
    d = read_json(path, "mask distances file")
    if "k" not in d:
        config = read_json(os.path.join(folder, "train_config.json"), "train config")
        d.update(k=config.get("eb_k", 5), epsilon=config.get("eb_epsilon", 0.1),
                 drawn_at=read_json(os.path.join(folder, "ticket.json"), "ticket file").get("step"))
    if not (isinstance(d.get("steps"), list) and np.shape(d.get("head_distance")) == np.shape(d.get("ffn_distance"))
            == (len(d["steps"]),) * 2):
        raise ValueError(f"{path}: not a mask distances file (steps and two square matrices of as many rows)")
    return d


def plot_distances(distances: dict, path: str) -> str | None:
    """The mask-distance matrices (heads, FFN; one colour scale, axes in steps, the draw step
    marked) and, per recorded mask, its largest distance to the k - 1 masks before it against
    epsilon: what the rule looks at, readable whether it fired or not. `distances`: what
    ticket.save_mask_distances writes. Returns `path`, or None without masks; ImportError without matplotlib."""
    from matplotlib.figure import Figure
    if not distances["steps"]:
        return None
    steps = np.array(distances["steps"], dtype=float)
    d = np.array([distances["head_distance"], distances["ffn_distance"]])
    k, eps, draw_step = distances["k"], distances["epsilon"], distances["drawn_at"]
    gaps = np.diff(steps) if len(steps) > 1 else np.ones(1)
    edges = np.concatenate([[steps[0] - gaps[0] / 2], (steps[1:] + steps[:-1]) / 2, [steps[-1] + gaps[-1] / 2]])
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, matrix, title in zip(axes, d, ("heads", "FFN neurons")):
        image = ax.pcolormesh(edges, edges, matrix, cmap="viridis", vmin=0, vmax=max(d.max(), eps))
        ax.set(title=f"mask distance, {title}", xlabel="step", ylabel="step", aspect="equal")
        ax.invert_yaxis()  # the first mask at the top left, as in the Early-Bird paper
        for line in (ax.axvline, ax.axhline) if draw_step is not None else ():
            line(draw_step, color="red", lw=1, ls="--")
    fig.colorbar(image, ax=axes[:2], label="fraction of units whose keep/prune bit differs")
    # per mask: its largest distance to the k - 1 before it (EarlyBird.update), heads and FFN
    largest = [[d[kind, i, max(0, i - k + 1):i].max() for i in range(1, len(steps))] for kind in (0, 1)]
    for kind, label in ((0, "heads"), (1, "FFN neurons")):
        axes[2].plot(steps[1:], largest[kind], marker="o", label=label)
    axes[2].axhline(eps, color="gray", ls="--", label=f"epsilon {eps}")
    if len(steps) > 1:  # the rule decides only once it has k masks
        axes[2].axvspan(edges[0], edges[min(k - 1, len(steps))], color="gray", alpha=0.15,
                        label=f"fewer than {k} masks")
    if draw_step is not None:
        axes[2].axvline(draw_step, color="red", lw=1, ls="--", label=f"ticket drawn, step {draw_step}")
    fired = [steps[i + 1] for i in range(k - 2, len(steps) - 1) if max(largest[0][i], largest[1][i]) < eps]
    axes[2].set(title=f"largest distance to the previous {k - 1} masks\n"
                      + (f"(the rule fired at step {fired[0]:.0f})" if fired else "(the rule did not fire)"),
                xlabel="step", ylim=(0, max(d.max(), eps) * 1.05))
    axes[2].legend()
    return _save(fig, path, 120)


def draw_distances(folder: str, out: str | None = None) -> str:
    """`python ticket.py distances FOLDER`: the mask-distance figure of a finished search, drawn from
    its mask_distances.json (for a search that ran without matplotlib)."""
    distances = read_distances(folder)
    out = out or os.path.join(folder, "mask_distances.png")
    try:
        drawn = plot_distances(distances, out)
    except ImportError:
        raise ValueError(f"{out}: drawing needs matplotlib (pip install matplotlib)") from None
    return f"mask distances -> {drawn}" if drawn else f"{folder}/mask_distances.json: no masks were recorded"


def plot_ticket(t, path: str) -> str:
    """A ticket.Ticket's kept heads as a layers x heads grid, kept FFN widths as bars against the full widths."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(f"{path}: --plot needs matplotlib (pip install matplotlib)") from None
    grid = np.full((len(t.heads), max(t.full_heads)), np.nan)  # NaN (blank): the layer has no such head
    for l, kept in enumerate(t.heads):
        grid[l, :t.full_heads[l]], grid[l, kept] = 0, 1
    fig = Figure(figsize=(11, 1.5 + 0.4 * len(t.heads)), layout="constrained")
    ax_heads, ax_ffn = fig.subplots(1, 2)
    ax_heads.imshow(grid, cmap="Blues", vmin=-0.3, vmax=1)
    ax_heads.set(title="heads (dark: kept)", xlabel="head", ylabel="layer", xticks=range(grid.shape[1]),
                 yticks=range(len(t.heads)))
    ax_ffn.barh(range(len(t.ffn)), t.full_ffn, color="lightgray", label="full width")
    ax_ffn.barh(range(len(t.ffn)), list(map(len, t.ffn)), color="tab:blue", label="kept")
    ax_ffn.set(title="FFN neurons", xlabel="neurons", ylabel="layer", yticks=range(len(t.ffn)))
    ax_ffn.invert_yaxis()  # layer 0 on top, as in the grid
    ax_ffn.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, path, 120)


def plot_curves(curves: dict, path: str) -> str | None:
    """Held-out MLM accuracy and loss against training seconds, one line per run and seed.
    curves: {seed: {run: [{train_seconds, val_acc, val_loss}]}}, runs among full, earlybert
    and random. Returns `path`, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {"full": ("tab:blue", "full"), "earlybert": ("tab:orange", "EarlyBERT"),
               "random": ("tab:gray", "random ticket")}
    for n, per_run in enumerate(curves.values()):
        for run, (colour, label) in colours.items():
            points = per_run[run]
            for ax, key in zip(axes, ("val_acc", "val_loss")):
                ax.plot([e["train_seconds"] for e in points], [e[key] for e in points], color=colour, lw=1,
                        label=label if n == 0 else None)
    for ax, name in zip(axes, ("held-out MLM accuracy", "held-out MLM loss")):
        ax.set_xlabel("training seconds (EarlyBERT and random: search + efficient)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(top=7)  # the first evaluation, at log(vocab), would flatten the rest
    axes[0].legend(title=f"seeds {' '.join(map(str, curves))}")
    return _save(fig, path, 110)
