"""BERT from scratch (Devlin et al., 2019), sized per layer for EarlyBERT.

Read beside the BERT paper (section 3) and "Attention Is All You Need" (section 3.2):

    Bert        = Embeddings -> N x Layer            (the encoder, returns hidden states)
    Layer       = post-LN( x + SelfAttention(x) ) -> post-LN( x + FeedForward(x) )
    BertMLM     = Bert + MLMHead      (pre-training; logits only at the masked positions)
    BertClassifier, BertQA            (fine-tuning heads: GLUE, SQuAD)

EarlyBERT needs two things from the model, both here:
- each layer may have its own number of attention heads and its own FFN width
  (`BertConfig.heads_per_layer`, `BertConfig.ffn_per_layer`): a pruned model is just
  such a config plus weights;
- two optional slots per layer, `SelfAttention.head_coef` and `FeedForward.ffn_coef`,
  that slim.py fills with the network-slimming coefficients during the search. They are
  None otherwise and then cost nothing.

Parameter names are a contract: checkpoint.py maps them onto the reference
implementation's, so real BERT checkpoints load. A training step's FLOPs are at the end.
"""
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12  # of the full model; fixes head_dim = hidden / heads
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_labels: int = 2  # classification heads only; 1 means regression (STS-B)
    # EarlyBERT: a rebuilt (pruned) model keeps a different number of heads and FFN
    # neurons in each layer. None means every layer has the full sizes above.
    heads_per_layer: list[int] | None = None
    ffn_per_layer: list[int] | None = None

    def __post_init__(self):
        assert self.hidden_size % self.num_attention_heads == 0, "hidden_size must divide into heads"
        assert self.hidden_act in ACTIVATIONS, f"unknown hidden_act {self.hidden_act!r}"
        assert self.num_hidden_layers >= 1, "at least one layer"
        for sizes in (self.heads_per_layer, self.ffn_per_layer):
            assert sizes is None or len(sizes) == self.num_hidden_layers, "one size per layer"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def heads(self, layer: int) -> int:
        return self.heads_per_layer[layer] if self.heads_per_layer else self.num_attention_heads

    def ffn(self, layer: int) -> int:
        return self.ffn_per_layer[layer] if self.ffn_per_layer else self.intermediate_size

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Keep the fields we know; a BERT config.json has many we do not need."""
        d = dict(d)
        if "num_labels" not in d and "id2label" in d:
            d["num_labels"] = len(d["id2label"])
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def pruned(self, ticket) -> "BertConfig":
        """This config with each layer's heads and FFN width as many as a ticket (ticket.Ticket) keeps."""
        return replace(self, heads_per_layer=list(map(len, ticket.heads)), ffn_per_layer=list(map(len, ticket.ffn)))

    def to_dict(self) -> dict:
        d = {"model_type": "bert", **asdict(self)}
        return {k: v for k, v in d.items() if v is not None}


ACTIVATIONS = {
    "gelu": F.gelu,  # the exact (erf) GELU of the original BERT
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


# ----------------------------------------------------------------------------- modules

class Embeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm and dropout (BERT, fig. 2)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, hidden)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., eq. 1) with `n_heads` heads.

    `head_coef` (n_heads,), when set by slim.py, is EarlyBERT's slimming coefficient of
    each head (sec. 3.1): it scales that head's context vector before the heads are
    concatenated, which is the same as scaling its attention probabilities.
    """

    def __init__(self, c: BertConfig, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, c.head_dim
        width = n_heads * c.head_dim  # smaller than hidden_size once heads are pruned
        self.query = nn.Linear(c.hidden_size, width)
        self.key = nn.Linear(c.hidden_size, width)
        self.value = nn.Linear(c.hidden_size, width)
        self.out = nn.Linear(width, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob
        self.head_coef = None
        self.plain = False  # plain matmul-softmax-matmul instead of SDPA (set_attention: faster in bf16 on CPUs)

    def forward(self, x, mask, rows=None):
        """x (B, T, hidden) -> (B, R, hidden) at `rows` (B, R, hidden), by default x itself:
        keys and values come from every position, queries only from the rows asked for."""
        rows = x if rows is None else rows
        B, T, _ = x.shape
        R = rows.shape[1]
        q = self.query(rows).view(B, R, self.n_heads, self.head_dim).transpose(1, 2)  # (B, heads, R, head_dim)
        k, v = (proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
                for proj in (self.key, self.value))  # (B, heads, T, head_dim)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.plain:  # softmax(Q K^T / sqrt(d)) V, written out (eq. 1)
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, heads, R, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = F.dropout(scores.softmax(-1), dropout_p, self.training) @ v
        else:  # a fused kernel (flash / memory-efficient); with mask=None (no padding) the fastest one
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        if self.head_coef is not None:
            y = y * self.head_coef.view(1, -1, 1, 1).to(y.dtype)
        y = y.transpose(1, 2).reshape(B, R, self.n_heads * self.head_dim)  # concat heads
        return self.out(y)


class FeedForward(nn.Module):
    """Position-wise FFN: up-projection, GELU, down-projection (Vaswani et al., eq. 2).

    `ffn_coef` (n_neurons,), when set by slim.py, scales each intermediate neuron's
    activation before the down-projection (EarlyBERT's FFN slimming coefficients, sec. 3.1).
    """

    def __init__(self, c: BertConfig, n_neurons: int):
        super().__init__()
        self.up = nn.Linear(c.hidden_size, n_neurons)
        self.down = nn.Linear(n_neurons, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]
        self.ffn_coef = None

    def forward(self, x):
        h = self.act(self.up(x))  # (B, T, n_neurons)
        if self.ffn_coef is not None:
            h = h * self.ffn_coef.to(h.dtype)
        return self.down(h)


class Layer(nn.Module):
    """One encoder layer, post-LN as in the original BERT: LN(x + Dropout(Sublayer(x))).

    With `positions` (B, P) it returns only those P positions' outputs (B, P, hidden):
    every position still serves as a key and a value, but the query, the output
    projection, the FFN and both LayerNorms run on P rows, not T. The outputs there are
    the same as the whole layer's; BertMLM asks this of the last layer.
    """

    def __init__(self, c: BertConfig, i: int):
        super().__init__()
        self.attn = SelfAttention(c, c.heads(i))
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ffn = FeedForward(c, c.ffn(i))
        self.ffn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x, mask, positions=None):
        rows = x if positions is None else gather_rows(x, positions)  # the rows whose output is wanted
        x = self.attn_norm(rows + self.dropout(self.attn(x, mask, rows)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


def set_attention(model: nn.Module, plain: bool):
    """Every SelfAttention of `model` computes attention written out (plain) or with SDPA.
    On a CPU in bf16 the written-out form ran 2-3x faster than every SDPA backend at the
    laptop recipe's shapes, forward and backward (its fused CPU kernels are tuned for fp32);
    in fp32 and on GPUs SDPA is as fast or faster. runtime.choose_precision measures which."""
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.plain = plain
    return model


def gather_rows(h, positions):
    """h (B, T, hidden) at positions (B, P) -> (B, P, hidden)."""
    return h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


class Bert(nn.Module):
    """The encoder: token ids (B, T) -> hidden states (B, T, hidden), or (B, P, hidden)
    at `positions` (B, P) when only those are wanted (the last layer then runs on P rows)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.layers = nn.ModuleList(Layer(c, i) for i in range(c.num_hidden_layers))
        init_weights(self, c.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, positions=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # attention_mask (B, T), True/1 at real tokens; None when nothing is padded.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, positions if i == last else None)
        return x


def init_weights(module: nn.Module, std: float = 0.02):
    """BERT's init: N(0, 0.02) for weights, zeros for biases, identity LayerNorms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


# ----------------------------------------------------------------------------- task heads

class BertPreTrainedBase(nn.Module):
    """What every task model shares: an encoder, BERT's weight init, and loading."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = Bert(config)

    def init_weights(self):
        return init_weights(self, self.config.initializer_range)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then a decoder tied to the
    word embeddings (Press & Wolf, 2017) plus a per-token output bias."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.transform = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h, word_embeddings):
        h = self.norm(self.act(self.transform(h)))
        return F.linear(h, word_embeddings, self.bias)  # (..., vocab)


class BertMLM(BertPreTrainedBase):
    """BERT for masked-LM pre-training.

    With `mlm_positions` (B, P) the vocabulary decoder runs only at those P positions
    (cramming, Geiping & Goldstein 2023): over every position it is most of a small
    BERT's cost, and the loss only needs the ~15% masked ones. The last encoder layer
    runs there too (but for its keys and values): nothing after it needs the other
    positions. Without it, logits come for every position (B, T, vocab).
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.mlm = MLMHead(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                mlm_positions=None, mlm_labels=None):
        h = self.bert(input_ids, token_type_ids, attention_mask, mlm_positions)  # (B, P or T, hidden)
        logits = self.mlm(h, self.bert.embeddings.word.weight)
        loss = None
        if mlm_labels is not None:  # -100 marks slots with nothing to predict
            loss = mlm_loss(logits.flatten(0, 1), mlm_labels.flatten())
        return logits, loss


def mlm_loss(logits, labels):
    """Mean cross-entropy over the slots whose label is not -100, computed in fp32.
    logits (N, vocab), labels (N,). bf16 logits on a CPU take ChunkedCrossEntropy: the same
    loss and gradient in half the time of casting the whole (N, vocab) block to fp32 first."""
    if logits.dtype == torch.bfloat16 and logits.device.type == "cpu":
        return ChunkedCrossEntropy.apply(logits, labels)
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of bf16 logits, a block of rows at a time in fp32: each block's loss and
    its gradient, softmax minus one-hot, over the valid rows' count, are computed in the
    forward pass while the block is in the cache, and the gradient is kept in bf16 (the
    logits' own gradient dtype) for the backward pass. Rows labelled -100 count for nothing."""
    ROWS = 32  # 32 x vocab 30522 in fp32 is 4 MB: about a CPU core's cache

    @staticmethod
    def forward(ctx, logits, labels):
        valid = labels != -100
        n = valid.sum().clamp(min=1)
        target = labels.clamp(min=0)[:, None]  # (N, 1), -100 rows point anywhere: they weigh 0
        grad = torch.empty_like(logits)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], ChunkedCrossEntropy.ROWS):
            rows = slice(i, i + ChunkedCrossEntropy.ROWS)
            x = logits[rows].float()  # (rows, vocab)
            lse = torch.logsumexp(x, -1, keepdim=True)  # (rows, 1)
            weight = (valid[rows] / n)[:, None]
            total += ((lse - x.gather(1, target[rows])) * weight).sum()
            x.sub_(lse).exp_().scatter_add_(1, target[rows], torch.full(target[rows].shape, -1.0, device=x.device))
            grad[rows] = x.mul_(weight)  # d loss / d logits: (softmax - one-hot) / n
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        grad, = ctx.saved_tensors
        return (grad if grad_loss.item() == 1 else grad * grad_loss.to(grad.dtype)), None  # usually 1: skip a pass


class BertClassifier(BertPreTrainedBase):
    """Sentence(-pair) classification, or regression when num_labels == 1 (BERT, sec. 4.1):
    the [CLS] hidden state through the pooler (dense + tanh), dropout, a linear layer."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        h = self.bert(input_ids, token_type_ids, attention_mask)
        pooled = torch.tanh(self.pooler(h[:, 0]))  # (B, hidden), the [CLS] token
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None and self.config.num_labels == 1:
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        elif labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        return logits, loss


class BertQA(BertPreTrainedBase):
    """Extractive QA (BERT, sec. 4.2): a start and an end logit for every token."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.qa = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                start_positions=None, end_positions=None):
        h = self.bert(input_ids, token_type_ids, attention_mask)
        start, end = self.qa(h).float().unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None:
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return (start, end), loss


def flops_per_sequence(config: BertConfig, seq_len: int, n_predictions: int) -> int:
    """Model FLOPs of one training step on one sequence: 3 x the forward pass (the backward
    pass costs about twice the forward), counting 2*m*n*k for every (m x k) @ (k x n) matmul.
    Embeddings (lookups), LayerNorm, softmax, GELU and the loss are not counted: they are
    O(T * hidden) against the matmuls' O(T * hidden^2). Per-layer heads and FFN widths
    come from the config, so a pruned (rebuilt) model counts only what it keeps.
    n_predictions: the P positions BertMLM predicts, where its last layer's queries, output
    projection and FFN run too (P = T: logits everywhere); 0 counts the encoder alone."""
    T, P, H, V = seq_len, n_predictions, config.hidden_size, config.vocab_size
    forward = 0
    for i in range(config.num_hidden_layers):
        R = P if P and i == config.num_hidden_layers - 1 else T  # the rows whose output is wanted
        width = config.heads(i) * config.head_dim  # the kept heads' concatenated size
        f = config.ffn(i)
        forward += 2 * 2 * T * H * width  # K, V projections, every position
        forward += 2 * R * H * width      # Q projection
        forward += 2 * R * T * width      # attention scores Q K^T, every head
        forward += 2 * R * T * width      # attention probabilities x V
        forward += 2 * R * width * H      # output projection
        forward += 2 * R * H * f + 2 * R * f * H  # FFN up and down
    forward += 2 * P * H * H + 2 * P * H * V  # MLM head at the predicted positions: transform, decoder
    return 3 * forward


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
