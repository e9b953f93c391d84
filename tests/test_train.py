"""Tests for train.py's training: the loop learns, DDP matches one process, and the EarlyBERT
phases chain (search -> efficient). Stopping and resuming: test_resume.py. Bad input and what a
run must never lose: test_train_input.py. Tiny model (2 layers, hidden 32) on a generated 150 KB corpus
with the fixed 1500-token test vocabulary (helpers.py: `tiny`; conftest.py: `searched`)."""
import json
import os
import shlex
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import prune
import slim
import train
from checkpoint import load_pretrained
from helpers import (BF16_EPS, DDP_ONE, DDP_TWO, EARLY_BIRD, FP32_EPS, SEARCH, TINY_MODEL, error_of, files_under,
                     log, relative_error, tiny, torchrun_two_processes)
from data import n_predictions
from model import BertConfig, BertMLM
from runtime import configure_optimizers, lr_lambda
from ticket import Ticket, random_ticket, show


def test_a_short_run_lowers_held_out_loss_clearly(corpus, tmp_path):
    summary = train.train(tiny(corpus, tmp_path, max_steps=200, eval_every=100))
    evals = [r for r in log(tmp_path, "full") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 100, 200]
    assert evals[0]["val_loss"] > 6.5  # ln(1500) = 7.3 for an untrained model
    assert summary["val_loss"] < evals[0]["val_loss"] - 0.8  # past the uniform guess, to about unigram level
    assert evals[1]["val_loss"] < evals[0]["val_loss"] and summary["steps"] == 200
    assert os.path.exists(tmp_path / "full" / "model" / "config.json")



def test_mask_prob_sets_the_training_masks_and_not_the_held_out_ones(corpus, tmp_path, monkeypatch):
    made, real = {}, train.data.MLMBatches

    def spy(data_dir, split, *args, **kw):
        batches = real(data_dir, split, *args, **kw)
        made[split] = batches.max_predictions
        return batches
    monkeypatch.setattr(train.data, "MLMBatches", spy)
    train.train(tiny(corpus, tmp_path, max_steps=2, mask_prob=0.3))  # the default is 0.4, BERT's 0.15
    assert made == {"train": n_predictions(32, 0.3), "val": n_predictions(32)} and n_predictions(32, 0.3) == 9
    assert error_of(tiny(corpus, tmp_path / "bad", mask_prob=1.5)).startswith("--mask-prob 1.5: give the fraction")
    assert not (tmp_path / "bad").exists()  # nothing written

def test_bf16_training_follows_fp32_closely(corpus, tmp_path):
    """bf16 autocast (fp32 weights, AdamW state and loss) learns as fp32 does: the same tiny run's
    losses agree to a few hundredths, and each run records the precision it computed in."""
    runs = {p: train.train(tiny(corpus, tmp_path / p, precision=p, max_steps=40)) for p in ("fp32", "bf16")}
    losses = {p: [r["loss"] for r in log(tmp_path / p, "full") if "loss" in r] for p in runs}
    assert len(losses["bf16"]) == 20 and losses["bf16"][-1] < losses["bf16"][0] - 1  # it learns
    # fp32 weights, AdamW and loss; only the matmuls' outputs round to bf16: within one bf16 rounding
    assert max(relative_error(b, a) for a, b in zip(losses["fp32"], losses["bf16"])) <= BF16_EPS
    assert relative_error(runs["bf16"]["val_loss"], runs["fp32"]["val_loss"]) <= BF16_EPS
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    recorded = json.load(open(tmp_path / "bf16" / "full" / "train_config.json"))
    assert recorded["precision"] == "bf16" and recorded["precision_asked"] == "bf16" and recorded["bf16_speedup"] > 0
    assert json.load(open(tmp_path / "fp32" / "full" / "train_config.json"))["bf16_speedup"] is None  # no probe


def adamw_apart(steps: int, lr: float) -> float:
    """How far apart two runs' weights may be after `steps` AdamW steps whose gradients differ only
    by rounding: a step moves a weight by lr * m / sqrt(v), a ratio that each gradient's relative
    rounding changes by as much. AdamW divides each entry by its own size, so an entry summed from
    larger terms that cancel takes the worst case: the forward's and backward's 2 x 1000 roundings."""
    return steps * lr * 2000 * FP32_EPS


@pytest.mark.slow  # about 20 s: torchrun starts two processes that import torch
def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 4 each == one process with batch 8."""
    cfg = tiny(corpus, tmp_path / "one", **DDP_ONE)
    one = train.train(cfg)
    run = torchrun_two_processes(tiny(corpus, tmp_path / "two", **DDP_TWO))
    assert run.returncode == 0, run.stderr[-3000:]
    a = torch.load(tmp_path / "one/search/ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "two/search/ckpt.pt", weights_only=False)["model"]
    for name in a:
        assert (a[name] - b[name]).abs().max() <= adamw_apart(cfg.max_steps, cfg.lr), name
    two = json.load(open(tmp_path / "two/search/summary.json"))
    assert relative_error(two["val_loss"], one["val_loss"]) <= TINY_MODEL


def test_search_draws_a_ticket_when_the_early_bird_rule_fires(corpus, tmp_path):
    """The rule of sec. 3.2 on a real search: the masks stop moving, and the ticket is drawn there."""
    summary = train.train(tiny(corpus, tmp_path, **EARLY_BIRD))
    assert summary["rule"] == "earlybird" and summary["drawn_at"] == summary["steps"] < 200
    ticket = Ticket.load(str(tmp_path / "search" / "ticket.json"))
    assert ticket.kind == "earlybird" and ticket.step == summary["steps"]
    assert [len(h) for h in ticket.heads] == [3, 3]  # 4 heads per layer, a third pruned layer-wise
    assert sum(map(len, ticket.ffn)) == round(0.6 * 128)  # 40% of the neurons pruned globally
    last = ticket.history[-1]
    assert last["head_distance"] < 0.3 and last["ffn_distance"] < 0.3
    matrix = json.load(open(tmp_path / "search" / "mask_distances.json"))
    assert len(matrix["steps"]) == summary["steps"] // 2 and matrix["head_distance"][0][0] == 0.0
    # the start weights (for --init rewind) are the untrained model
    assert os.path.exists(tmp_path / "search" / "start" / "config.json")


def test_the_shared_search_draws_at_its_fixed_step(searched):
    """--draw-step: the official code's fixed draw, labelled "fixed-step"; the rule only records its distances."""
    summary, ticket = searched.summary, Ticket.load(str(searched.out / "search" / "ticket.json"))
    assert (summary["rule"], summary["drawn_at"], summary["steps"]) == ("fixed-step", 12, 12)
    assert (ticket.kind, ticket.step, len(ticket.history)) == ("fixed-step", 12, 6)


def efficient(searched, **kw) -> train.Config:
    """The efficient phase after `searched` as the README types it: no recipe flag (it takes the
    search's), only where and how often to write."""
    return train.Config(**{"phase": "efficient", "out_dir": str(searched.out), "device": "cpu", "log_every": 2,
                           "eval_every": 1000, "ckpt_every": 1000, **kw})


@pytest.fixture(scope="module")
def continued(searched):
    """The efficient phase with --init continue and the early-bird ticket, on from the draw to the
    search's --max-steps. `cache_before`: the search's prepared corpus (files_under) and the data
    cache's folders, from before the run."""
    cfg = efficient(searched)
    cache_before = files_under(searched.summary["data_dir"]), sorted(os.listdir(searched.out / "data"))
    return SimpleNamespace(cfg=cfg, summary=train.train(cfg), steps=searched.cfg.max_steps - searched.summary["drawn_at"],
                           cache_before=cache_before)


@pytest.mark.parametrize("init,kind", [("rewind", "earlybird"), ("continue", "earlybird"), ("continue", "random")])
def test_efficient_phase_trains_the_rebuilt_ticket(corpus, searched, init, kind, request):
    out = searched.out
    drawn = json.load(open(out / "search" / "summary.json"))["drawn_at"]
    max_steps = searched.cfg.max_steps  # the search's schedule: continued from the draw, or anew (rewind)
    cfg = efficient(searched, init=init, ticket=kind)
    ticket = Ticket.load(str(out / "search" / "ticket.json"))
    if kind == "random":
        ticket = random_ticket(ticket.full_heads, ticket.full_ffn, ticket.head_ratio, ticket.ffn_ratio, 0,
                                       ffn_multiple=ticket.ffn_multiple)
    # what the phase starts from: the ticket rebuilt from the search's start (rewind) or its last weights
    model, used, start = train.efficient_model(train.search_settings(cfg))
    assert (start is None) == (init == "rewind")
    if init == "rewind":
        source = load_pretrained(BertMLM, str(out / "search" / "start"), verbose=False)
    else:
        source = slim.add_coefficients(BertMLM(load_pretrained(BertMLM, str(out / "search" / "start"),
                                                               verbose=False).config))
        source.load_state_dict(torch.load(out / "search" / "ckpt.pt", weights_only=False)["model"])
    expected = prune.rebuild(source, ticket).state_dict()
    assert used.heads == ticket.heads and used.ffn == ticket.ffn
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name

    if (init, kind) == ("continue", "earlybird"):  # the run other tests share
        assert request.getfixturevalue("continued").cfg == cfg
        summary = request.getfixturevalue("continued").summary
    else:
        summary = train.train(cfg)
    name = train.run_name(cfg)
    assert name == {("rewind", "earlybird"): "efficient-rewind", ("continue", "earlybird"): "efficient",
                    ("continue", "random"): "efficient-random"}[init, kind]
    trained = load_pretrained(BertMLM, str(out / name / "model"), verbose=False)
    assert trained.config.heads_per_layer == [len(h) for h in ticket.heads]
    assert trained.config.ffn_per_layer == [len(f) for f in ticket.ffn]
    assert summary["steps"] == max_steps and summary["first_step"] == (drawn if init == "continue" else 0)
    if init == "continue":  # on from the draw: the search's schedule and its next batches
        search_ckpt = torch.load(out / "search" / "ckpt.pt", weights_only=False)
        ckpt = torch.load(out / name / "ckpt.pt", weights_only=False)
        tokenizer = train.data.load_tokenizer(corpus[1])
        special = {t: tokenizer.token_to_id(t) for t in train.data.SPECIALS}
        per_epoch = train.data.MLMBatches(searched.summary["data_dir"], "train", 8, 32, 1500, special).batches_per_epoch
        read = lambda loader: loader["epoch"] * per_epoch + loader["index"]  # batches drawn so far
        assert read(ckpt["loader"]) == read(search_ckpt["loader"]) + max_steps - drawn
        logged = [(r["step"], r["lr"]) for r in log(out, name) if "lr" in r]
        s = searched.cfg
        schedule = lr_lambda(max(1, int(s.warmup * s.max_steps)), s.max_steps)
        assert logged and all(lr == pytest.approx(s.lr * schedule(step)) for step, lr in logged)
    assert summary["parameters"] < json.load(open(out / "search" / "summary.json"))["parameters"]


def test_efficient_phase_trains_on_the_search_data(corpus, searched, continued, tmp_path):
    """No --data: the search's corpus, vocabulary and length, from its prepared cache (not the
    built-in corpus, and not prepared again); another --data is an error naming the search's config."""
    out = searched.out
    search_config = json.load(open(out / "search" / "train_config.json"))
    used = json.load(open(out / "efficient" / "train_config.json"))
    assert search_config["data"] == corpus[0] and continued.cfg.data == ""
    for key in ("data", "vocab", "max_len"):
        assert used[key] == search_config[key], key
    assert continued.summary["data_dir"] == searched.summary["data_dir"]
    assert (files_under(searched.summary["data_dir"]), sorted(os.listdir(out / "data"))) == continued.cache_before
    other = tmp_path / "other.txt"
    other.write_text("Another corpus. It was not searched on.\n")
    message = error_of(efficient(searched, data=str(other), force=True))  # found before anything is replaced
    assert str(out / "search" / "train_config.json") in message and f"--data {corpus[0]}" in message


def test_a_full_run_beside_its_search_trains_on_its_corpus_even_from_a_moved_folder(small_corpus, tmp_path,
                                                                                     monkeypatch):
    """A full run beside its search (same --data, --vocab, --vocab-size) trains on the search's prepared corpus,
    as the efficient phase does: the two are compared. Moved with its folder, a corpus cache is missed (its
    key holds the files' absolute paths), and a vocabulary trained again differs in a few tokens; with the
    search's corpus gone too, the full run takes the vocabulary the search saved with its start."""
    (tmp_path / "a").mkdir()
    shutil.copy(small_corpus, tmp_path / "a" / "corpus.txt")
    monkeypatch.chdir(tmp_path / "a")
    run = lambda phase, **kw: train.train(tiny(("corpus.txt", ""), "out", phase=phase, vocab_size=600, max_steps=4,
                                               draw_step=2, **kw))
    search = run("search")  # trains the vocabulary
    os.rename(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    full = run("full")
    trained = os.path.abspath(os.path.join(search["data_dir"], "vocab", "vocab.txt"))  # where it is now
    assert full["data_dir"] == search["data_dir"] and full["vocab"] == trained
    assert os.listdir("out/data") == [os.path.basename(search["data_dir"])]  # nothing prepared again
    assert run("efficient")["vocab"] == trained  # not the path the vocabulary had before the move
    tokens = open(trained).read()
    shutil.rmtree(search["data_dir"])
    again = run("full", force=True)
    assert again["vocab"] == os.path.abspath(os.path.join("out", "search", "start", "vocab.txt"))
    assert open(again["vocab"]).read() == tokens


def searched_optimizer_state(path) -> dict:
    """The search's AdamW state (ckpt.pt) by parameter name: the searched model and its optimizer
    rebuilt in the order the search built them (coefficients added before the optimizer)."""
    state = torch.load(path, weights_only=False)
    model = slim.add_coefficients(BertMLM(BertConfig.from_dict(state["model_config"])))
    optimizer = configure_optimizers(model, 1e-3, 0.01)
    optimizer.load_state_dict(state["optimizer"])
    return {name: optimizer.state[p] for name, p in model.named_parameters()}


def test_adamw_moments_are_carried_over_sliced_like_the_weights(corpus, searched, continued):
    """--init continue: the smaller model's AdamW starts from the search's exp_avg / exp_avg_sq,
    indexed by the ticket (EarlyBERT sec. 3.3 removes heads and neurons, so their moments go too),
    and goes on counting the search's steps. The attention output and FFN down columns, into
    which the rebuild multiplies each kept unit's coefficient c, get gradients divided by c:
    their exp_avg is divided by c and their exp_avg_sq by c^2."""
    out = searched.out
    model, ticket, start = train.efficient_model(train.search_settings(continued.cfg))
    full = searched_optimizer_state(out / "search" / "ckpt.pt")
    coef = torch.load(out / "search" / "ckpt.pt", weights_only=False)["model"]
    head_dim = 32 // 4
    for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
        expected = {name: s[key] for name, s in full.items() if not name.endswith("_coef")}
        for l in range(2):
            rows = [h * head_dim + i for h in ticket.heads[l] for i in range(head_dim)]  # the kept heads' slices
            neurons, layer = ticket.ffn[l], f"bert.layers.{l}."
            c_rows = coef[f"{layer}attn.head_coef"][[i // head_dim for i in rows]]
            m = {name[len(layer):]: s[key] for name, s in full.items() if name.startswith(layer)}
            expected.update({layer + name: value for name, value in {
                **{f"attn.{p}.{k}": m[f"attn.{p}.{k}"][rows] for p in ("query", "key", "value")
                   for k in ("weight", "bias")},
                "attn.out.weight": m["attn.out.weight"][:, rows] / c_rows ** power,
                "ffn.up.weight": m["ffn.up.weight"][neurons], "ffn.up.bias": m["ffn.up.bias"][neurons],
                "ffn.down.weight": m["ffn.down.weight"][:, neurons] / coef[f"{layer}ffn.ffn_coef"][neurons] ** power,
            }.items()})
        carried = {name: s[key] for name, s in start["moments"].items()}
        assert set(carried) == {name for name, _ in model.named_parameters()}  # every parameter, no coefficient
        for name, value in carried.items():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=0, msg=f"{key} {name}")
    assert carried["bert.layers.0.attn.query.weight"].shape[0] == 3 * head_dim  # really sliced
    assert sum(carried[f"bert.layers.{l}.ffn.up.bias"].shape[0] for l in range(2)) < 128

    ckpt = torch.load(out / "efficient" / "ckpt.pt", weights_only=False)
    small = BertMLM(BertConfig.from_dict(ckpt["model_config"]))
    optimizer = configure_optimizers(small, 1e-3, 0.01)
    optimizer.load_state_dict(ckpt["optimizer"])
    for name, p in small.named_parameters():  # the search's count + the efficient steps, not a fresh count
        assert full[name]["step"] == searched.summary["drawn_at"], name
        assert optimizer.state[p]["step"] == full[name]["step"] + continued.steps, name


def test_search_saves_its_model_with_the_coefficients_folded_in(searched):
    """search/model is the searched BERT at full size, each coefficient multiplied into the
    weights after it: same logits as the model with coefficients (ckpt.pt), loadable as any checkpoint."""
    state = torch.load(searched.out / "search" / "ckpt.pt", weights_only=False)
    with_coefficients = slim.add_coefficients(BertMLM(BertConfig.from_dict(state["model_config"])))
    with_coefficients.load_state_dict(state["model"])
    heads, ffn = slim.coefficients(with_coefficients)
    assert max(float((c - 1).abs().max()) for c in heads + ffn) > 1e-2  # trained: folding them in is no no-op
    saved = load_pretrained(BertMLM, str(searched.out / "search" / "model"), verbose=False)
    assert saved.config.heads(0) == 4 and saved.config.ffn(0) == 64
    assert all(layer.attn.head_coef is None and layer.ffn.ffn_coef is None for layer in saved.bert.layers)
    ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        expected, _ = with_coefficients.eval()(ids, attention_mask=mask)
        logits, _ = saved.eval()(ids, attention_mask=mask)
    assert relative_error(logits, expected) <= TINY_MODEL


def printed_next_command(printed: str) -> list[str]:
    """The arguments of the report's `next: python train.py ...` line."""
    lines = [line for line in printed.splitlines() if line.startswith("next: ")]
    assert len(lines) == 1, printed[-2000:]
    argv = shlex.split(lines[0][len("next: "):].split("   (")[0])
    assert argv[:2] == ["python", "train.py"]
    return argv[2:]


def test_the_report_prints_the_command_that_continues_the_search(searched):
    """The rule fired before --max-steps: the efficient phase with every flag the search set
    (quoted: the out dir has a space), and nothing else; and the vocabulary, to pin in other runs."""
    assert f"ticket drawn at step {searched.summary['drawn_at']} " in searched.printed
    vocab = os.path.abspath(searched.cfg.vocab)
    assert f"vocabulary -> {vocab} (--vocab {shlex.quote(vocab)} pins it for other runs)" in searched.printed
    argv = printed_next_command(searched.printed)
    assert argv[:2] == ["--phase", "efficient"] and "--init" not in argv
    cfg = train.parse_args(argv)
    for key in ("data", "vocab", "max_len", "out_dir"):
        assert getattr(cfg, key) == getattr(searched.cfg, key), key
    assert replace(cfg, phase="search") == searched.cfg


def test_a_ticket_drawn_at_the_last_step_points_to_rewind(corpus, tmp_path, capsys):
    """The rule did not fire by --max-steps: a "last-step" ticket, so named everywhere; nothing is left
    to continue after the last step: the next command rewinds, and it trains."""
    searched = train.train(tiny(corpus, tmp_path, phase="search", max_steps=4, eb_epsilon=0.0))  # never fires
    printed = capsys.readouterr().err
    assert "ticket drawn at step 4 of 4 (at the last step: the early-bird rule did not fire by --max-steps)" in printed
    assert searched["rule"] == json.load(open(tmp_path / "search" / "ticket.json"))["kind"] == "last-step"
    assert "last-step ticket, drawn at step 4" in show(str(tmp_path / "search" / "ticket.json"))
    cfg = train.parse_args(printed_next_command(printed))
    assert (cfg.phase, cfg.init, cfg.out_dir, cfg.max_steps) == ("efficient", "rewind", str(tmp_path), 4)
    summary = train.train(cfg)
    assert summary["init"] == "rewind" and summary["steps"] == 4
    assert os.path.exists(tmp_path / "efficient-rewind" / "model" / "model.safetensors")



def test_a_rounded_ticket_and_its_random_control_keep_ffn_widths_in_multiples(corpus, tmp_path):
    """--ffn-multiple (64 on a GPU unless asked): each layer keeps a multiple of it, and the
    efficient phase's random control is rounded as the drawn ticket was."""
    train.train(tiny(corpus, tmp_path, phase="search", max_steps=6, draw_step=4, ffn_multiple=16))
    drawn = Ticket.load(str(tmp_path / "search" / "ticket.json"))
    _, control, _ = train.efficient_model(tiny(corpus, tmp_path, phase="efficient", data="", vocab="", max_steps=6,
                                               max_len=train.Config.max_len, ticket="random"))
    for t in (drawn, control):  # 2 layers of 64 neurons, 77 kept unrounded: no two multiples of 16 add up to 77
        assert t.ffn_multiple == 16 and all(len(f) % 16 == 0 for f in t.ffn) and sum(map(len, t.ffn)) > 77

@pytest.mark.slow  # 25-60 s while inductor's kernel cache is cold
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile on the CPU (inductor) needs a C++ compiler")
def test_compile_trains_a_pruned_model_as_eager_does(corpus, searched, tmp_path):
    """--compile on a rebuilt model whose layers differ in heads and FFN width: same weights
    as eager after two steps (the searched model has no dropout, whose random numbers a
    compiled graph draws differently)."""
    out, summary = searched.out, searched.summary
    kw = dict(search_dir=str(out / "search"))
    train.train(efficient(searched, out_dir=str(tmp_path / "eager"), **kw), stop_after=summary["drawn_at"] + 2)
    train.train(efficient(searched, out_dir=str(tmp_path / "compiled"), compile=True, **kw),
                stop_after=summary["drawn_at"] + 2)
    a = torch.load(tmp_path / "eager/efficient/ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "compiled/efficient/ckpt.pt", weights_only=False)
    assert a["model_config"]["heads_per_layer"] is not None  # really a pruned model
    for name in a["model"]:
        assert (a["model"][name] - b["model"][name]).abs().max() <= adamw_apart(2, EARLY_BIRD["lr"]), name


def test_a_search_with_sgd_coefficients_continues_into_the_efficient_phase(corpus, tmp_path):
    """--coef-optimizer sgd: the coefficients move as network slimming's SGD moves them (not by
    AdamW: their state is the search's own), and the efficient phase takes the weights' AdamW
    moments from the search's checkpoint, which holds none for the coefficients."""
    settings = dict(SEARCH, max_steps=8, draw_step=4, coef_optimizer="sgd", coef_lr=0.5)
    search = train.train(tiny(corpus, tmp_path, **settings))
    ckpt = torch.load(tmp_path / "search" / "ckpt.pt", weights_only=False)
    assert search["drawn_at"] == 4 and len(ckpt["coef_sgd"]["state"]) == 2 * 2
    adamw_params = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    model = slim.add_coefficients(BertMLM(BertConfig.from_dict(ckpt["model_config"])))
    assert adamw_params == len(list(model.parameters())) - 2 * 2
    coefs = [v for k, v in ckpt["model"].items() if k.endswith("_coef")]
    assert any((c - 1).abs().max() > 1e-3 for c in coefs)  # trained
    continued = train.train(efficient(SimpleNamespace(out=tmp_path)))
    assert continued["first_step"] == 4 and continued["steps"] == 8
    cfg = json.load(open(tmp_path / "efficient" / "train_config.json"))
    assert cfg["coef_optimizer"] == "sgd" and cfg["coef_lr"] == 0.5  # the search's recipe
