"""Network slimming (Liu et al., 2017) as EarlyBERT uses it to search for a ticket.

In its searching stage EarlyBERT (Chen et al., ACL 2021, sec. 3.1) gives every attention
head and every FFN intermediate neuron a learnable scalar, the slimming coefficient, set to 1.0:

    head h of layer l:    context_h   -> c_head[l, h] * context_h    (before the out-projection)
    neuron i of layer l:  GELU(up)_i  -> c_ffn[l, i]  * GELU(up)_i   (before the down-projection)

and trains them with the rest of the network under an L1 penalty, which pushes the
coefficients of units the task does not need towards zero (the searching stage's loss:
task loss + lambda_head * sum |c_head| + lambda_ffn * sum |c_ffn|). ticket.py then prunes
the units with the smallest |c| (sec. 3.2). model.py multiplies by the coefficients when its
`head_coef` / `ffn_coef` slots are set; this file fills and empties those slots, and `Search`
adds the L1 term and the early-bird rule to a training loop's steps.
"""
import os

import torch
import torch.nn as nn

from ticket import EarlyBird, Ticket, current_masks, draw_ticket, save_mask_distances


def _layers(model: nn.Module):
    """The encoder layers of a bare `Bert` or of a task model (BertMLM, ...) that wraps one."""
    return getattr(model, "bert", model).layers


def add_coefficients(model: nn.Module) -> nn.Module:
    """Give every head and every FFN neuron a slimming coefficient, all 1.0, so the model's
    outputs do not change (EarlyBERT sec. 3.1; network slimming's scaling factors). Call it
    before building the optimizer, or the coefficients are not trained. They are 1-D, so a
    weight-decay split by dimension already puts them in the no-decay group, as the
    official code does."""
    for layer in _layers(model):
        device = layer.attn.query.weight.device
        layer.attn.head_coef = nn.Parameter(torch.ones(layer.attn.n_heads, device=device))
        layer.ffn.ffn_coef = nn.Parameter(torch.ones(layer.ffn.up.out_features, device=device))
    return model


def remove_coefficients(model: nn.Module) -> nn.Module:
    """Empty the slots again: the model has no coefficients and pays nothing for them.
    (prune.rebuild() folds surviving coefficients into the weights instead.)"""
    for layer in _layers(model):
        layer.attn.head_coef = None
        layer.ffn.ffn_coef = None
    return model


def coefficient_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every coefficient as a parameter: heads then FFN of layer 0, then layer 1, ..."""
    params = [p for layer in _layers(model) for p in (layer.attn.head_coef, layer.ffn.ffn_coef)]
    assert all(p is not None for p in params), "call slim.add_coefficients(model) first"
    return params


def coefficients(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """All coefficients at once, as detached float32 CPU copies: ([c_head per layer],
    [c_ffn per layer]). What ticket.draw_ticket and the early-bird rule read."""
    params = coefficient_parameters(model)
    copies = [p.detach().float().cpu().clone() for p in params]
    return copies[0::2], copies[1::2]


def l1_penalty(model: nn.Module, lambda_head: float = 1e-4, lambda_ffn: float = 1e-4) -> torch.Tensor:
    """lambda_head * sum |c_head| + lambda_ffn * sum |c_ffn|, summed over all layers: the L1
    term of EarlyBERT's searching stage (sec. 3.1; 1e-4 for both is the official fine-tuning
    default). Its gradient is lambda * sign(c), a constant pull of every coefficient towards 0.

    Count it once per optimizer step: add it to the loss of one step, or to each
    micro-batch's loss *before* that loss is divided by the gradient-accumulation steps.
    Departs from the official code, which adds it after the division, so there the
    penalty counts once per micro-batch and its strength grows with the number of
    accumulation steps: the same lambda searches differently when a batch is split differently.
    """
    params = coefficient_parameters(model)
    heads, ffn = params[0::2], params[1::2]
    return (lambda_head * sum(c.abs().sum() for c in heads)
            + lambda_ffn * sum(c.abs().sum() for c in ffn))


class Search:
    """EarlyBERT's searching stage (sec. 3.1-3.2): what it adds to the steps of a training loop,
    train.py's in pre-training and finetune.py's in fine-tuning:

        search = Search(model, EarlyBird(k, epsilon), every, ...)  # before the optimizer: adds the coefficients
        loss = loss + search.penalty()                             # the L1 term, once per optimizer step
        ticket = search.after_step(step, last=step == final_step)  # the ticket, once it is time to draw it

    after_step records the masks the coefficients give every `every` steps (and at draw_step) for
    the early-bird rule, and draws the ticket when the rule fires (kind "earlybird"), at draw_step
    when it is > 0 (kind "fixed-step", the official code's way; the rule then only records its
    distances), or at the search's last step when neither happened (kind "last-step"). `recorded`
    is the rule's record of this step (mask distances), or None. ffn_multiple rounds the drawn
    ticket's FFN widths (draw_ticket), not the recorded masks.

    coef_optimizer "adamw" (EarlyBERT's official code) trains the coefficients with the weights;
    "sgd" gives them network slimming's own optimizer (SGD, momentum 0.9, learning rate coef_lr on
    the weights' schedule; the L1 term's gradient is its subgradient lambda * sign(c)). Under AdamW
    every coefficient whose gradient the L1 pull dominates moves by about the learning rate per
    step, whatever its size; under SGD each moves by its own gradient, so units can drift apart.
    The training loop then keeps the coefficients out of its optimizer (`sgd_parameters`) and calls
    unscale() before clipping and step() after its own optimizer's step.
    """

    def __init__(self, model: nn.Module, early_bird: EarlyBird, every: int, lambda_head: float = 1e-4,
                 lambda_ffn: float = 1e-4, head_ratio: float = 1 / 3, ffn_ratio: float = 0.4, draw_step: int = 0,
                 ffn_multiple: int = 1, coef_optimizer: str = "adamw", coef_lr: float = 0.1):
        self.model = add_coefficients(model)
        self.early_bird, self.every, self.draw_step, self.ffn_multiple = early_bird, every, draw_step, ffn_multiple
        self.lambdas, self.ratios, self.recorded = (lambda_head, lambda_ffn), (head_ratio, ffn_ratio), None
        assert coef_optimizer in ("adamw", "sgd"), coef_optimizer
        self.sgd_parameters = coefficient_parameters(model) if coef_optimizer == "sgd" else []
        self.sgd = torch.optim.SGD(self.sgd_parameters, lr=coef_lr, momentum=0.9) if self.sgd_parameters else None
        self.coef_lr = coef_lr

    def penalty(self) -> torch.Tensor:
        return l1_penalty(self.model, *self.lambdas)

    def unscale(self, scaler):
        """fp16's gradient scaling undone for the coefficients too (before the gradients are clipped)."""
        if self.sgd:
            scaler.unscale_(self.sgd)

    def step(self, scaler, lr_scale: float):
        """--coef-optimizer sgd: the coefficients' update, at coef_lr times the weights' schedule factor."""
        if self.sgd:
            for group in self.sgd.param_groups:
                group["lr"] = self.coef_lr * lr_scale
            scaler.step(self.sgd)
            self.sgd.zero_grad(set_to_none=True)

    def after_step(self, step: int, last: bool = False) -> Ticket | None:
        self.recorded, fired = None, False
        if step % self.every == 0 or step == self.draw_step:
            fired = self.early_bird.update(*current_masks(*coefficients(self.model), *self.ratios), step)
            self.recorded = self.early_bird.history[-1]
            if self.draw_step > 0:
                fired = step == self.draw_step
        if fired:
            return self.draw(step, "fixed-step" if self.draw_step > 0 else "earlybird")
        return self.draw(step, "last-step") if last else None

    def draw(self, step: int, kind: str) -> Ticket:
        """The ticket the coefficients give now, with the mask distances that led to it."""
        return draw_ticket(*coefficients(self.model), *self.ratios, self.ffn_multiple, kind=kind, step=step,
                           history=self.early_bird.history)

    def save(self, folder: str, ticket: Ticket) -> str | None:
        """folder/ticket.json and the mask distances (ticket.save_mask_distances); returns the picture's path."""
        ticket.save(os.path.join(folder, "ticket.json"))
        return save_mask_distances(self.early_bird, folder, ticket.step)
