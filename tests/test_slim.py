"""slim.py: network-slimming coefficients on heads and FFN neurons, their L1 penalty, and the search
that adds both and the early-bird rule to a training loop's steps."""
import pytest
import torch
import torch.nn as nn

from helpers import FP32_EPS, TINY_MODEL, relative_error, ticket_config
from model import Bert, BertClassifier, BertConfig, BertMLM
from runtime import configure_optimizers
from slim import Search, add_coefficients, coefficient_parameters, coefficients, l1_penalty, remove_coefficients
from ticket import EarlyBird, Ticket


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64)
    return BertConfig(**{**base, **kw})


def batch(seed=0, B=3, T=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 101, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0  # one padded sequence
    return ids, mask


def test_coefficients_are_parameters_only_after_add_coefficients():
    model = BertMLM(tiny_config())
    names = set(dict(model.named_parameters()))
    keys = set(model.state_dict())
    assert not any("coef" in n for n in names)

    add_coefficients(model)
    added = set(dict(model.named_parameters())) - names
    assert added == {f"bert.layers.{l}.attn.head_coef" for l in range(3)} | \
                    {f"bert.layers.{l}.ffn.ffn_coef" for l in range(3)}
    params = coefficient_parameters(model)
    assert [p.shape[0] for p in params] == [4, 48] * 3
    assert all(torch.equal(p, torch.ones_like(p)) for p in params)

    remove_coefficients(model)
    assert set(dict(model.named_parameters())) == names and set(model.state_dict()) == keys


def test_coefficients_follow_the_layer_sizes_of_a_pruned_bare_encoder():
    model = add_coefficients(Bert(tiny_config(heads_per_layer=[4, 1, 2], ffn_per_layer=[48, 5, 17])))
    heads, ffn = coefficients(model)
    assert [len(c) for c in heads] == [4, 1, 2] and [len(c) for c in ffn] == [48, 5, 17]


def test_coefficients_are_detached_cpu_copies():
    model = add_coefficients(BertMLM(tiny_config()))
    heads, ffn = coefficients(model)
    heads[0][0], ffn[0][0] = 5.0, 5.0
    assert model.bert.layers[0].attn.head_coef[0].item() == 1.0
    assert model.bert.layers[0].ffn.ffn_coef[0].item() == 1.0
    assert not heads[1].requires_grad and heads[1].dtype == torch.float32 and heads[1].device.type == "cpu"


def test_coefficients_at_one_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = BertClassifier(tiny_config()).eval()
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, attention_mask=mask)[0]
        after = add_coefficients(model)(ids, attention_mask=mask)[0]
    assert torch.equal(before, after)  # multiplying by 1.0 is exact


def test_l1_penalty_is_lambda_times_magnitudes_and_its_gradient_lambda_times_sign():
    # Coefficients put in the slots by hand (not add_coefficients), so this grades l1_penalty alone.
    model = BertMLM(tiny_config())
    heads = [torch.tensor([-0.7, 0.3, 2.0, -0.1]), torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([0.2] * 4)]
    ffn = [torch.linspace(-2, 1, 48) + 0.01, -torch.ones(48), torch.zeros(48)]
    for layer, h, f in zip(model.bert.layers, heads, ffn):
        layer.attn.head_coef, layer.ffn.ffn_coef = nn.Parameter(h.clone()), nn.Parameter(f.clone())
    lambda_head, lambda_ffn = 1e-3, 2e-4
    penalty = l1_penalty(model, lambda_head=lambda_head, lambda_ffn=lambda_ffn)
    expected = lambda_head * (3.1 + 2.5 + 0.8) + lambda_ffn * (sum(f.abs().sum().item() for f in ffn))
    assert penalty.item() == pytest.approx(expected, rel=1e-6)

    penalty.backward()
    assert model.bert.layers[0].attn.head_coef.grad.tolist() == pytest.approx([-1e-3, 1e-3, 1e-3, -1e-3])
    for layer, h, f in zip(model.bert.layers, heads, ffn):  # d/dc lambda |c| = lambda sign(c); 0 at c = 0
        assert torch.allclose(layer.attn.head_coef.grad, lambda_head * torch.sign(h))
        assert torch.allclose(layer.ffn.ffn_coef.grad, lambda_ffn * torch.sign(f))


def test_task_loss_trains_the_coefficients():
    torch.manual_seed(0)
    model = add_coefficients(BertClassifier(tiny_config(num_labels=3)))
    ids, mask = batch()
    _, loss = model(ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    loss.backward()
    for p in coefficient_parameters(model):
        assert p.grad is not None and p.grad.abs().max() > 0


def test_zero_head_coefficient_removes_that_head():
    torch.manual_seed(0)
    model = BertMLM(tiny_config()).eval()
    ids, mask = batch()
    with torch.no_grad():
        add_coefficients(model)
        model.bert.layers[1].attn.head_coef[2] = 0.0  # head 2 of layer 1
        model.bert.layers[2].ffn.ffn_coef[7] = 0.0   # neuron 7 of layer 2
        with_zero_coefs = model(ids, attention_mask=mask)[0]

        # The same units removed by hand: their columns of the projection that consumes them zeroed.
        remove_coefficients(model)
        head_dim = model.config.head_dim
        model.bert.layers[1].attn.out.weight[:, 2 * head_dim:3 * head_dim] = 0.0
        model.bert.layers[2].ffn.down.weight[:, 7] = 0.0
        removed = model(ids, attention_mask=mask)[0]
    assert relative_error(with_zero_coefs, removed) <= TINY_MODEL  # the same sums, some terms 0 another way


def set_by_hand(model, head_values, ffn_values):
    """The same coefficients in every layer."""
    for layer in model.bert.layers:
        layer.attn.head_coef = nn.Parameter(torch.tensor(head_values))
        layer.ffn.ffn_coef = nn.Parameter(torch.tensor(ffn_values))


def test_search_draws_when_the_rule_fires_at_the_fixed_step_or_at_the_end(monkeypatch):
    """Search (sec. 3.1-3.2): coefficients of 1 added, the L1 term, a mask every `every` steps, and
    the ticket when the early-bird rule fires, at --draw-step instead when given, else at the last step."""
    monkeypatch.setattr("ticket.mask_distance", lambda a, b: (a != b).double().mean().item())  # graded on its own
    heads, ffn = [0.9, 0.1, 0.8, 0.7], [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]
    rule = Search(BertMLM(ticket_config()), EarlyBird(k=2, epsilon=0.1), 10, 1e-2, 1e-3, head_ratio=0.25, ffn_ratio=0.5)
    assert all(bool((c == 1).all()) for c in sum(coefficients(rule.model), []))
    set_by_hand(rule.model, heads, ffn)
    assert torch.equal(rule.penalty(), l1_penalty(rule.model, 1e-2, 1e-3))
    assert rule.after_step(5) is None and rule.recorded is None  # not a mask step
    assert rule.after_step(10) is None and rule.recorded["step"] == 10  # one mask: too few to decide
    t = rule.after_step(20)  # the same mask again: the rule fires
    assert (t.kind, t.step, t.heads, t.ffn) == ("earlybird", 20, [[0, 2, 3]] * 3, [[1, 3, 5, 7]] * 3)
    assert t.history == rule.early_bird.history and len(t.history) == 2

    fixed = Search(BertMLM(ticket_config()), EarlyBird(k=2, epsilon=0.1), 10, head_ratio=0.25, ffn_ratio=0.5,
                   draw_step=30)
    set_by_hand(fixed.model, heads, ffn)
    assert [fixed.after_step(s) for s in (10, 20)] == [None, None]  # the rule only records
    t = fixed.after_step(30)
    assert (t.kind, t.step) == ("fixed-step", 30) and fixed.early_bird.history[-1]["head_distance"] == 0.0
    # the fallback when a search ends before the rule fires: labelled for what it is
    assert fixed.after_step(35, last=True) == Ticket(t.heads, t.ffn, t.full_heads, t.full_ffn, 0.25, 0.5,
                                                     "last-step", 35, fixed.early_bird.history)


def test_sgd_trains_the_coefficients_apart_from_adamw():
    """--coef-optimizer sgd (network slimming): the coefficients leave AdamW and take SGD steps with
    momentum 0.9 at coef_lr times the schedule's factor: c <- c - lr * (0.9 * buffer + grad)."""
    torch.manual_seed(0)
    model = BertClassifier(tiny_config(num_labels=3))
    search = Search(model, EarlyBird(k=2, epsilon=0.1), 10, 1e-2, 1e-2, coef_optimizer="sgd", coef_lr=0.5)
    coefs = coefficient_parameters(model)
    assert search.sgd_parameters == coefs
    adamw = configure_optimizers(model, 1e-3, 0.01, exclude=search.sgd_parameters)
    in_adamw = [p for group in adamw.param_groups for p in group["params"]]
    assert not any(p is c for p in in_adamw for c in coefs)
    assert len(in_adamw) == len(list(model.parameters())) - len(coefs)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ids, mask = batch()
    expected, buffers = [c.detach().clone() for c in coefs], None
    for lr_scale in (0.5, 0.25):
        _, loss = model(ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
        (loss + search.penalty()).backward()
        grads = [c.grad.clone() for c in coefs]
        assert all(g.abs().max() > 0 for g in grads)
        search.unscale(scaler)
        adamw.step()
        search.step(scaler, lr_scale)
        adamw.zero_grad(set_to_none=True)
        buffers = grads if buffers is None else [0.9 * b + g for b, g in zip(buffers, grads)]
        expected = [e - 0.5 * lr_scale * b for e, b in zip(expected, buffers)]
        for c, e in zip(coefs, expected):
            assert relative_error(c, e) <= 8 * FP32_EPS  # a few roundings a step, of values near 1
        assert all(c.grad is None for c in coefs)
    assert not any(p in adamw.state for p in coefs)


def test_under_adamw_the_search_has_no_optimizer_of_its_own():
    search = Search(BertMLM(tiny_config()), EarlyBird(k=2, epsilon=0.1), 10)
    assert search.sgd is None and search.sgd_parameters == []
