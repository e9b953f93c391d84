"""bench.py: the FLOP count behind MFU, the pruned shapes, and a benchmark run end to end."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
from bench import flops_per_sequence, n_predictions, peak_flops, pruned_config, random_batch
from model import BertConfig, BertMLM


def small_config(**kw):
    # L=2 layers, H=8 hidden, 2 heads (head_dim 4), FFN 16, vocab V=10
    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=16, max_position_embeddings=16)
    return BertConfig(**{**base, **kw})


def test_flops_match_a_hand_count():
    T, P = 4, 1
    per_layer = (3 * 2 * T * 8 * 8     # Q, K, V: (T x 8) @ (8 x 2 heads * 4)
                 + 2 * T * T * 8       # scores
                 + 2 * T * T * 8       # probabilities x values
                 + 2 * T * 8 * 8       # output projection
                 + 2 * T * 8 * 16      # FFN up
                 + 2 * T * 16 * 8)     # FFN down
    head = 2 * P * 8 * 8 + 2 * P * 8 * 10  # transform + decoder at the one predicted position
    assert per_layer == 4608 and head == 288
    assert flops_per_sequence(small_config(), T, P) == 3 * (2 * per_layer + head) == 28512


def test_flops_of_a_pruned_model_count_only_kept_units():
    T, P = 4, 1
    pruned = small_config(heads_per_layer=[1, 2], ffn_per_layer=[10, 16])
    layer0 = 3 * 2 * T * 8 * 4 + 2 * T * T * 4 + 2 * T * T * 4 + 2 * T * 4 * 8 + 2 * T * 8 * 10 + 2 * T * 10 * 8
    layer1 = 4608  # unpruned, as in the hand count above
    assert flops_per_sequence(pruned, T, P) == 3 * (layer0 + layer1 + 288) == 22368
    # Linear in the units: one head costs 4 projections of width 4 plus two T x T products,
    # one FFN neuron an up and a down column; 1 head and 6 neurons were pruned.
    per_head, per_neuron = 4 * 2 * T * 8 * 4 + 2 * 2 * T * T * 4, 2 * 2 * T * 8
    removed = flops_per_sequence(small_config(), T, P) - flops_per_sequence(pruned, T, P)
    assert removed == 3 * (per_head + 6 * per_neuron)


def test_flops_equal_what_torch_counts_for_a_training_step():
    # Dropout > 0 keeps CPU attention on the math path (bmm), which FlopCounterMode sees.
    config = small_config(vocab_size=50, hidden_size=16, num_attention_heads=4, intermediate_size=24,
                          heads_per_layer=[1, 3], ffn_per_layer=[7, 24])
    model = BertMLM(config).train()
    B, T = 3, 12
    for sparse, P in ((True, n_predictions(T)), (False, T)):
        with FlopCounterMode(display=False) as counter:
            model(**random_batch(config, B, T, sparse))[1].backward()
        assert counter.get_total_flops() == B * flops_per_sequence(config, T, P)


def test_default_ticket_shapes_and_flop_ratio():
    base = BertConfig()  # BERT-base
    small = pruned_config(base)
    assert [small.heads(i) for i in range(12)] == [8] * 12  # 4 of 12 heads pruned, as the paper
    assert [small.ffn(i) for i in range(12)] == [3072 - 1229] * 12  # round(0.4 * 3072) pruned
    T, P, H, d = 128, 19, 768, 64
    full, pruned = flops_per_sequence(base, T, P), flops_per_sequence(small, T, P)
    per_head, per_neuron = 4 * 2 * T * H * d + 2 * 2 * T * T * d, 2 * 2 * T * H
    assert full - pruned == 3 * 12 * (4 * per_head + 1229 * per_neuron)
    # Heads and FFN shrink by 1/3 and 0.4 but the MLM head does not: the ratio lies between.
    assert 0.6 < pruned / full < 2 / 3


def test_predicted_positions_as_the_data_loader():
    assert n_predictions(128) == 19  # ceil(0.15 * 126)
    assert n_predictions(22) == 3  # 0.15 * 20 is 3.0000000000000004 in floating point
    batch = random_batch(small_config(), 4, 8, sparse=True)
    assert batch["mlm_positions"].shape == (4, 1) and (batch["mlm_positions"] > 0).all()
    dense = random_batch(small_config(), 4, 8, sparse=False)["mlm_labels"]
    assert ((dense != -100).sum(1) == 1).all()  # the same P positions, in a (B, T) label tensor


def test_peak_flops_by_gpu_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12 and peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA A10") == 125e12 and peak_flops("NVIDIA A10G") is None
    assert peak_flops("Some Future GPU") is None


def test_benchmark_runs_end_to_end_on_cpu(capsys):
    results = bench.main(["--device", "cpu", "--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
                          "--vocab", "100", "--batch", "2", "--seq", "16", "--seq", "24", "--steps", "2"])
    out = capsys.readouterr().out
    assert out.startswith(f"torch {torch.__version__} | cpu:")
    assert out.count("tokens/s") == 6 and "MFU" not in out  # 3 variants x 2 lengths; no MFU on a CPU
    assert "ours / reference: time" in out and "efficient / ours: time" in out
    names = {r["variant"] for r in results}
    assert {"ours (sparse MLM head)", "reference (decoder over every position)", "efficient (pruned)"} <= names
    assert {r["seq"] for r in results} == {16, 24} and all(r["tokens_per_s"] > 0 for r in results)


def test_loader_speed_on_a_tiny_corpus(tmp_path):
    pytest.importorskip("tokenizers")
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Document {i} says the quick brown fox jumps over the lazy dog "
                                f"{i} times, then rests in the shade of tree number {i}." for i in range(60)))
    per_s = bench.loader_batches_per_s([str(text)], str(tmp_path / "data"), batch_size=4, seq_len=16,
                                       steps=5, pin_memory=False)
    assert per_s > 0
