"""One experiment, several runs of train.py: where each run writes, the corpus and the recipe they share, the model
the efficient phase takes from the search, when a run has finished, and the commands that go on.

One rule for every flag of train.py's Config. A flag either changes what is computed (the
*recipe*: model sizes, data, vocabulary, length, masking, optimisation, schedule, search and
ticket settings, seed) or only where and how often things are written or shown (the
*presentation*: `PRESENTATION` below). An experiment never changes its recipe silently:

    --phase efficient   takes every recipe flag from the search's train_config.json
    --resume            takes every recipe flag from the checkpoint (ckpt.pt)

A recipe flag left out takes the recorded value; one typed with another value, its default or not,
is refused in one line naming the flag and both values (keep_recipe). The schedule is part of the
recipe, so a finished run is not extended: a new run starts from its model (`--init-from`).
"""
import os
import shlex
from dataclasses import asdict, fields, replace

import corpus
import data
import prune
from checkpoint import load_checkpoint, load_pretrained, read_json
from model import BertConfig, BertMLM
from runtime import broadcast, configure_optimizers
from slim import add_coefficients, coefficient_parameters
from ticket import Ticket, random_ticket, random_ticket_like

# The flags whose values a run's results do not depend on: they may differ between the search and
# the efficient phase and on --resume. Every other field of train.py's Config is the recipe.
PRESENTATION = ("out_dir", "device", "compile", "log_every", "eval_every", "ckpt_every", "max_minutes", "resume", "force")


def recipe(cfg) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in PRESENTATION}


def typed(cfg) -> frozenset:
    """The fields given on the command line (runtime.parse_config records them); for a config made
    in code, the fields that differ from their defaults."""
    given = getattr(cfg, "typed", None)
    return given if given is not None else frozenset(k for k, v in asdict(cfg).items() if v != getattr(type(cfg), k))


def keep_recipe(cfg, recorded: dict, path: str, who: str, advice: str, own=(), given=None):
    """cfg with the recipe recorded in `path` (a search's train_config.json, a checkpoint's config):
    a recipe flag left out takes the recorded value; one typed (`given`: typed(cfg) by default) with
    another value is refused in one line naming the flag and both values. `own`: the fields this run
    chooses itself."""
    taken, given = {}, typed(cfg) if given is None else given
    for key, value in recipe(cfg).items():
        if key in own or key not in recorded or recorded[key] == value:
            continue
        if key in given:  # typed on the command line
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{path}: {who} ran with {flag} {recorded[key]}, this command gives {flag} {value}; "
                             f"{advice}")
        taken[key] = recorded[key]
    return replace(cfg, **taken)


# ----------------------------------------------------------------------------- the runs' folders

def search_folder(cfg) -> str:
    """Where the search this run continues wrote its output: --search-dir, by default OUT_DIR/search."""
    return cfg.search_dir or os.path.join(cfg.out_dir, "search")


def same_corpus_as_search(cfg) -> bool:
    """Does a full run train on its search's prepared corpus? Yes beside a search given the same --data,
    --vocab and --vocab-size (and no --init-from): the full run and EarlyBERT are compared, and a corpus
    prepared again (its cache missed: the folder moved) trains a vocabulary that differs in a few tokens."""
    path = os.path.join(search_folder(cfg), "train_config.json")
    if cfg.phase != "full" or cfg.init_from or not os.path.exists(path):
        return False
    searched = read_json(path, "search config")
    return all(searched.get(key) == getattr(cfg, key) for key in ("data", "vocab", "vocab_size"))


def prepare_data(cfg, rank: int, world: int):
    """Tokenize the corpus once into OUT_DIR/data/KEY (rank 0; the others wait and reuse it).
    The efficient phase, and a full run on the search's data (same_corpus_as_search), take the search's
    prepared corpus. Else the vocab: --vocab, else the starting checkpoint's, else one trained on the corpus."""
    meta, follows = None, cfg.phase == "efficient" or same_corpus_as_search(cfg)
    searched, start = (os.path.join(search_folder(cfg), name) for name in ("summary.json", "start"))
    if rank == 0 and follows and os.path.exists(searched):  # the search's own prepared corpus
        data_dir = read_json(searched, "run summary").get("data_dir", "")
        if os.path.exists(os.path.join(data_dir, "meta.json")):
            meta = dict(data.corpus_meta(data_dir), data_dir=data_dir)
    if rank == 0 and meta is None:  # the search's corpus is gone (or there is none): its vocabulary, if any
        source = cfg.init_from or (start if follows and (cfg.phase == "efficient" or os.path.isdir(start)) else "")
        vocab, lowercase = cfg.vocab, True
        if not vocab and source:
            _, vocab, lowercase = data.checkpoint_tokenizer(source)
        cache = os.path.join(cfg.out_dir, "data")
        new = not os.path.exists(cache)
        try:
            files = corpus.resolve_files(cfg.data, cache)
            data_dir, meta = data.prepare_corpus(files, cache, vocab, cfg.vocab_size, lowercase)
        except BaseException:  # input refused (or Ctrl-C): no empty cache folder is left behind
            if new and os.path.isdir(cache) and not os.listdir(cache):
                os.rmdir(cache)
            raise
        meta = dict(meta, data_dir=data_dir)
    meta = broadcast(meta, rank, world)
    return meta["data_dir"], meta


def run_name(cfg) -> str:
    """OUT_DIR/NAME of a run: the phase, and for efficient training which ticket and init,
    so the control runs sit beside the EarlyBERT one instead of overwriting it."""
    if cfg.phase != "efficient":
        return cfg.phase
    return "efficient" + ("" if cfg.ticket == "earlybird" else "-" + cfg.ticket) + ("-rewind" if cfg.init == "rewind" else "")


def check_run_dir(cfg, run_dir: str):
    """Before anything is written: never replace another run's results unasked."""
    ckpt, summary = os.path.join(run_dir, "ckpt.pt"), os.path.join(run_dir, "summary.json")
    if cfg.resume and not os.path.exists(ckpt):
        raise ValueError(f"{ckpt}: no checkpoint to resume from (drop --resume to start afresh)")
    if not cfg.resume and not cfg.force and (os.path.exists(ckpt) or os.path.exists(summary)):
        raise ValueError(f"{run_dir}: holds an earlier run's results; --resume continues it, --force replaces "
                         f"it, or choose another --out-dir")


def resumed_settings(cfg, run_dir: str, given=None) -> tuple:
    """--resume: (cfg with the checkpoint's recipe, the checkpoint). A larger --max-steps would
    stretch the schedule, whose learning rate decays to 0 at the old one: refused, saying what to do.
    `given`: the flags typed on the command line (typed)."""
    path = os.path.join(run_dir, "ckpt.pt")
    state = load_checkpoint(path)
    was = state["config"].get("max_steps", cfg.max_steps)
    given = typed(cfg) if given is None else given
    if cfg.max_steps > was and "max_steps" in given:
        raise ValueError(f"{path}: --max-steps {cfg.max_steps} would extend this run's schedule of {was} steps (its "
                         f"learning rate decays to 0 there), which --resume does not do; {train_on(cfg, run_dir)}")
    cfg = keep_recipe(cfg, state["config"], path, "the run", "--resume continues a run as it was: leave the flag out, "
                      "or start afresh (--force or another --out-dir)", given=given)
    return cfg, state


def search_settings(cfg, given=None):
    """The efficient phase continues the search's experiment: every recipe flag from its
    train_config.json (keep_recipe), but the phase's own choices (which ticket, which init)."""
    search = search_folder(cfg)
    for need in ("ticket.json", "start", "ckpt.pt", "train_config.json"):
        if not os.path.exists(os.path.join(search, need)):
            first = command(cfg, phase="search", init="continue", ticket="earlybird", search_dir="")
            raise ValueError(f"{os.path.join(search, need)}: missing; run `{first}` first (or point --search-dir "
                             f"at its output)")
    path = os.path.join(search, "train_config.json")
    return keep_recipe(cfg, read_json(path, "train config"), path, "the search",
                       "the efficient phase continues the search's recipe: leave the flag out (for another "
                       "recipe, search again into another --out-dir)", own=("phase", "init", "ticket", "search_dir"),
                       given=given)


def efficient_model(cfg):
    """EarlyBERT stage 3 (sec. 3.3): the physically smaller BERT that the search's ticket describes.

    --init continue (our pre-training default): the weights at the draw step, and training
    goes on from that step (schedule, data position, and AdamW's moments sliced like the
    weights: `at_draw`), so search + efficient together take --max-steps steps, as the full
    baseline does; only the steps after the draw are cheaper.
    --init rewind (the official fine-tuning code's choice): the weights the search started
    from, trained for --max-steps steps anew; in pre-training that throws the search away."""
    search = search_folder(cfg)
    ticket_path = os.path.join(search, "ticket.json")
    ticket = Ticket.load(ticket_path)
    if cfg.ticket == "random-per-layer":  # the second control: the drawn widths, units at random
        ticket = random_ticket_like(ticket, cfg.seed)
    if cfg.ticket == "random":  # the control: same ratios, units chosen at random
        ticket = random_ticket(ticket.full_heads, ticket.full_ffn, ticket.head_ratio, ticket.ffn_ratio, cfg.seed,
                               ticket.ffn_multiple)  # rounded as the drawn one
    if cfg.init == "rewind":  # the weights the search started from (the official code's choice)
        model = load_pretrained(BertMLM, os.path.join(search, "start"), verbose=False)
        ticket.check_fits(model.config, ticket_path)
        return prune.rebuild(model, ticket), ticket, None
    state = load_checkpoint(os.path.join(search, "ckpt.pt"))
    if state["step"] >= cfg.max_steps:
        raise ValueError(f"{ticket_path}: drawn at step {state['step']}, the search's last: nothing is left to train "
                         f"with --init continue; {command(cfg, init='rewind')} trains the ticket from the start")
    model = add_coefficients(BertMLM(BertConfig.from_dict(state["model_config"])))
    model.load_state_dict(state["model"])
    ticket.check_fits(model.config, ticket_path)
    sgd = coefficient_parameters(model) if cfg.coef_optimizer == "sgd" else ()  # not AdamW's in that search
    optimizer = configure_optimizers(model, cfg.lr, cfg.weight_decay, exclude=sgd)  # the search's parameter order
    optimizer.load_state_dict(state["optimizer"])
    at_draw = {"step": state["step"], "loader": state["loader"], "moments": prune.adamw_state(model, optimizer, ticket)}
    return prune.rebuild(model, ticket), ticket, at_draw


def finished(cfg, run_dir: str) -> dict | None:
    """The summary of a finished run: a search that drew its ticket, a run that reached --max-steps
    (one that --max-minutes stopped earlier goes on)."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    done = read_json(path, "run summary")
    return done if cfg.phase == "search" or done.get("steps", 0) >= cfg.max_steps else None


# ----------------------------------------------------------------------------- what a run says

def command(cfg, **change) -> str:
    """The train.py command of `cfg` with `change`: every flag that differs from its default
    (quoted: a path may hold spaces), the changed ones last; --resume and --force only when asked."""
    cfg = replace(cfg, **{"resume": False, "force": False, **change})
    flag = lambda name, v: (f"--{'' if v else 'no-'}{name}" if isinstance(v, bool) else f"--{name} {shlex.quote(str(v))}")
    names = [f.name for f in fields(cfg) if f.name not in change] + list(change)
    return " ".join([f"python train.py --phase {cfg.phase}"] + [
        flag(name.replace("_", "-"), getattr(cfg, name)) for name in names
        if name != "phase" and getattr(cfg, name) != getattr(type(cfg), name)])


def train_on(cfg, run_dir: str) -> str:
    """How to train a run's model further: a new run that starts from it."""
    more = command(cfg, phase="full", init="continue", ticket="earlybird", search_dir="", init_from=os.path.join(
        run_dir, "model"), out_dir=cfg.out_dir.rstrip("/") + "-more")
    return f"to train on, start a new run from its model: {more}"


def stopped(cfg, given, run_dir: str, step: int, why: str, no_ticket: bool) -> str:
    """What a run that stopped before its end says: where, why, and the command that goes on."""
    return (f"{run_dir}: stopped at step {step} of {cfg.max_steps} ({why}"
            + (", before the early-bird rule fired: no ticket drawn yet" if no_ticket else "")
            + f"); {os.path.join(run_dir, 'ckpt.pt')} saved; go on with: {command(given, resume=True, max_minutes=0)}")


DRAWN_HOW = {"earlybird": "the early-bird rule fired", "fixed-step": "at --draw-step, the official code's way",
             "last-step": "at the last step: the early-bird rule did not fire by --max-steps"}


def report(cfg, given, s: dict, run_dir: str) -> str:
    """What a finished run prints: its numbers, where its files are, and the commands that go on
    (with the user's own flags: `given`)."""
    lines = [f"{cfg.phase}: steps {s['first_step']}-{s['steps']} in {s['train_seconds']:.0f} s ({s['mean_step_ms']:.0f} "
             f"ms/step), held-out MLM loss {s['val_loss']:.3f}, accuracy {s['val_acc']:.3f}"]
    if s["steps"] < cfg.max_steps and cfg.phase != "search":
        lines.append(f"stopped by --max-minutes at step {s['steps']} of {cfg.max_steps}; go on with: "
                     f"{command(given, resume=True, max_minutes=0)}")
    if cfg.phase == "search":
        lines += [f"ticket drawn at step {s['drawn_at']} of {cfg.max_steps} ({DRAWN_HOW.get(s['rule'], s['rule'])}): "
                  f"keeps {s['kept_heads']}/{s['total_heads']} heads and {s['kept_ffn']}/{s['total_ffn']} FFN neurons "
                  f"-> {run_dir}/ticket.json",
                  f"mask distances -> {run_dir}/mask_distances.json"
                  + (f" and {s['plot']}" if s["plot"] else " (pip install matplotlib, then `python ticket.py "
                     f"distances {shlex.quote(run_dir)}` draws them)")]
        if s["drawn_at"] < cfg.max_steps:
            lines.append(f"next: {command(given, phase='efficient')}   (the controls: add --ticket random; the "
                         f"baseline: --phase full with the same flags)")
        else:  # drawn at the last step: nothing is left to continue, so train the ticket from the start
            lines.append(f"next: {command(given, phase='efficient', init='rewind')}   (the ticket was drawn at the last "
                         f"step, so there is nothing left to continue; or search again with a larger --max-steps)")
    if cfg.phase == "search" or not cfg.vocab:  # one trained anew differs a little from run to run: pin it
        lines.append(f"vocabulary -> {s['vocab']} (--vocab {shlex.quote(s['vocab'])} pins it for other runs)")
    lines.append(f"model -> {run_dir}/model (load with checkpoint.load_pretrained or finetune.py --model)")
    return "\n".join(lines)
