"""bench.py: the FLOP count behind MFU, the pruned shapes, and a benchmark run end to end."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
from bench import peak_flops, random_batch
from data import n_predictions
from model import BertConfig, BertMLM, flops_per_sequence
from runtime import Precision
from ticket import full_ticket, random_ticket


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
    # The last layer: keys and values at every position, all else at the predicted one only.
    last = (2 * 2 * T * 8 * 8          # K, V
            + 2 * P * 8 * 8            # Q
            + 2 * P * T * 8 * 2        # scores, probabilities x values
            + 2 * P * 8 * 8            # output projection
            + 2 * P * 8 * 16 * 2)      # FFN up and down
    head = 2 * P * 8 * 8 + 2 * P * 8 * 10  # transform + decoder at the one predicted position
    assert per_layer == 4608 and last == 1920 and head == 288
    assert flops_per_sequence(small_config(), T, P) == 3 * (per_layer + last + head) == 20448
    assert flops_per_sequence(small_config(), T, T) == 3 * (2 * per_layer + 4 * head)  # logits everywhere
    assert flops_per_sequence(small_config(), T, 0) == 3 * 2 * per_layer  # the encoder alone


def test_flops_of_a_pruned_model_count_only_kept_units():
    T, P = 4, 1
    pruned = small_config(heads_per_layer=[1, 2], ffn_per_layer=[10, 16])
    layer0 = 3 * 2 * T * 8 * 4 + 2 * T * T * 4 + 2 * T * T * 4 + 2 * T * 4 * 8 + 2 * T * 8 * 10 + 2 * T * 10 * 8
    layer1 = 1920  # unpruned, the last layer as in the hand count above
    assert flops_per_sequence(pruned, T, P) == 3 * (layer0 + layer1 + 288) == 14304
    # Linear in the units: one head costs 4 projections of width 4 plus two T x T products,
    # one FFN neuron an up and a down column; 1 head and 6 neurons were pruned.
    per_head, per_neuron = 4 * 2 * T * 8 * 4 + 2 * 2 * T * T * 4, 2 * 2 * T * 8
    removed = flops_per_sequence(small_config(), T, P) - flops_per_sequence(pruned, T, P)
    assert removed == 3 * (per_head + 6 * per_neuron)


@pytest.mark.slow
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


def default_ticket_config(config, ffn_multiple=1):
    """What bench.py times as the efficient model: a default-ratio random ticket's shapes."""
    full = full_ticket(config)
    return config.pruned(random_ticket(full.full_heads, full.full_ffn, ffn_multiple=ffn_multiple))


def test_default_ticket_shapes_and_flop_ratio():
    base = BertConfig()  # BERT-base
    small = default_ticket_config(base)
    assert [small.heads(i) for i in range(12)] == [8] * 12  # 4 of 12 heads pruned in every layer, as the paper
    kept = sum(small.ffn(i) for i in range(12))  # 40% of all FFN neurons pruned, one threshold over all layers
    assert kept == 12 * 3072 - round(0.4 * 12 * 3072) and len(set(small.ffn_per_layer)) > 1
    T, P, H, d = 128, 19, 768, 64
    full, pruned = flops_per_sequence(base, T, P), flops_per_sequence(small, T, P)
    per_head, per_neuron = 4 * 2 * T * H * d + 2 * 2 * T * T * d, 2 * 2 * T * H
    # In the last layer only keys and values run at all T positions, the rest at the P predicted.
    last_head, last_neuron = 2 * 2 * T * H * d + 2 * 2 * P * H * d + 2 * 2 * P * T * d, 2 * 2 * P * H
    removed = [3072 - small.ffn(i) for i in range(12)]
    assert full - pruned == 3 * (11 * 4 * per_head + 4 * last_head + sum(removed[:11]) * per_neuron
                                 + removed[11] * last_neuron)
    # Heads and FFN shrink by 1/3 and 0.4 but the MLM head does not: the ratio lies between.
    assert 0.6 < pruned / full < 2 / 3
    rounded = default_ticket_config(base, ffn_multiple=64)
    assert all(w % 64 == 0 for w in rounded.ffn_per_layer)


def test_predicted_positions_as_the_data_loader():
    assert n_predictions(128) == 19  # ceil(0.15 * 126)
    assert n_predictions(22) == 3  # 0.15 * 20 is 3.0000000000000004 in floating point
    batch = random_batch(small_config(), 4, 8, sparse=True)
    assert batch["mlm_positions"].shape == (4, 1) and (batch["mlm_positions"] > 0).all()
    dense = random_batch(small_config(), 4, 8, sparse=False)["mlm_labels"]
    assert ((dense != -100).sum(1) == 1).all()  # the same P positions, in a (B, T) label tensor
    assert random_batch(small_config(), 4, 8, sparse=True, mask_prob=0.4)["mlm_positions"].shape == (4, 3)


def test_peak_flops_by_gpu_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12 and peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA A10") == 125e12 and peak_flops("NVIDIA A10G") is None
    assert peak_flops("Some Future GPU") is None


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_cpu(capsys, monkeypatch):
    """On a CPU, --precision auto times every variant in fp32 and in bf16, in turn, each against its own matmul peak."""
    # a 256 x 256 peak matmul, not 2048 x 2048: a CPU without AVX-512 emulates bf16 at ~1 GFLOP/s
    square_matmul = bench.square_matmul
    monkeypatch.setattr(bench, "square_matmul", lambda device, dtype: square_matmul(device, dtype, n=256))
    results = bench.main(["--device", "cpu", "--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
                          "--vocab", "100", "--batch", "2", "--seq", "16", "--seq", "24", "--steps", "2",
                          "--mask-prob", "0.4"])
    out = capsys.readouterr().out
    assert "seq 16, 6 predicted positions" in out and "seq 24, 9 predicted positions" in out  # 40% of 14, of 22
    assert out.startswith(f"torch {torch.__version__} | cpu:")
    assert out.count("tokens/s") == 12 and "MFU" not in out  # 3 variants x 2 precisions x 2 lengths; no MFU on a CPU
    assert out.count("fp32: matmul peak") == 2 and out.count("bf16: matmul peak") == 2
    assert out.count("% of matmul peak") == 12 and out.count("bf16 / fp32 step time: ours") == 2
    assert "ours / reference: time" in out and "efficient / ours: time" in out
    assert out.count("would compute in fp32 here") == 2  # the tests' probe finds bf16 no faster (conftest)
    names = {r["variant"] for r in results}
    assert {"ours (sparse MLM head)", "reference (decoder over every position)", "efficient (pruned)"} <= names
    assert {r["precision"] for r in results} == {"fp32", "bf16"}
    assert {r["seq"] for r in results} == {16, 24} and all(r["tokens_per_s"] > 0 for r in results)
    one = bench.main(["--device", "cpu", "--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
                      "--vocab", "100", "--batch", "2", "--seq", "16", "--steps", "1", "--precision", "fp32"])
    assert {r["precision"] for r in one} == {"fp32"} and len(one) == 3


@pytest.mark.parametrize("flags", [["--mask-prob", "2"], ["--mask-prob", "0"], ["--batch", "0"], ["--seq", "2"]])
def test_bad_flags_give_one_line_and_run_nothing(flags, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(["--device", "cpu", *flags])
    assert str(exit.value).startswith("error: --") and "\n" not in str(exit.value)
    assert capsys.readouterr().out == ""  # nothing timed, not even the header


def test_loader_speed_on_a_small_corpus(tmp_path, small_corpus, fixed_vocab):
    per_s = bench.loader_batches_per_s([small_corpus], str(tmp_path / "data"), batch_size=4, seq_len=16,
                                       steps=5, pin_memory=False, vocab=fixed_vocab)
    assert 0 < per_s < float("inf")
    assert len(list((tmp_path / "data").glob("small_corpus-*/meta.json"))) == 1  # prepared once, in its own cache


def test_profile_groups_a_steps_time_by_kind_of_op():
    config = small_config(vocab_size=50, hidden_size=16, num_attention_heads=4, intermediate_size=24)
    groups = bench.profile_step(BertMLM(config), random_batch(config, 2, 12, True), torch.device("cpu"),
                                Precision(torch.float32))
    assert set(groups) == {name for name, _ in bench.OP_GROUPS} | {"other"}
    assert groups["matmuls"] > 0 and groups["optimizer (AdamW)"] > 0 and groups["LayerNorm"] > 0


def test_variants_are_timed_in_turn_and_their_median_counts(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) ** 2)  # each call lasts longer
    order = []
    steps = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    seconds = bench.seconds_in_turn(steps, rounds=3, device=torch.device("cpu"))
    assert order == ["a", "b"] * 3
    # a's calls span clock ticks (0,1), (4,5), (8,9): squared, 1, 9, 17 seconds; b's 5, 13, 21
    assert seconds == {"a": 9, "b": 13}


def test_square_matmul_multiplies_two_n_by_n_matrices():
    product = bench.square_matmul(torch.device("cpu"), torch.float32, n=8)()
    assert product.shape == (8, 8) and product.dtype == torch.float32
