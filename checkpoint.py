"""Checkpoints: the folders BERT checkpoints come in, and the training state `--resume` needs.

A checkpoint folder holds `config.json`, `vocab.txt` and `model.safetensors` (or the older
`pytorch_model.bin`), with the reference implementation's parameter names, so a downloaded
BERT loads here and a full-size folder written here loads in `transformers`. Our module
names are shorter; `_RENAMES` maps between the two. A pruned model (EarlyBERT's efficient
phase) has a number of heads and an FFN width per layer, which config.json records as
`heads_per_layer` and `ffn_per_layer`.

`ckpt.pt` is everything a run needs to continue exactly: weights, optimizer, schedule, RNG
states, data position. Every file here is written to a temporary name and renamed
(`atomic`), so a crash, even in the middle of a write, never leaves a half-written file
where a good one was; the temporary a killed process left is removed by the next write.
"""
import glob
import json
import os
import random
import shutil
import socket
import struct
import sys
from contextlib import contextmanager, suppress

import numpy as np
import torch
import torch.distributed as dist

from model import BertConfig, BertPreTrainedBase


def temporary(path: str) -> str:
    """The name `path` is written under before it is renamed into place: this host's and this
    process's own, so two writers never share one, and one that a killed process left is known."""
    # one shared name would let two runs writing one file (the built-in corpus, say) write into each other's
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def remove_stale(path: str):
    """Removes the temporaries of `path` (files or folders) left by processes of this host that no
    longer run: killed in the middle of a write (SIGKILL, out of memory), they never cleaned up."""
    # without it, every killed run's temporary stays for good: for prepare_corpus a folder the corpus's size
    prefix = f"{path}.tmp-{socket.gethostname()}-"
    for tmp in glob.glob(glob.escape(prefix) + "*"):
        pid = tmp[len(prefix):]
        if pid.isdigit() and not running(int(pid)):
            with suppress(FileNotFoundError):  # another process may be removing it too
                shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)


def running(pid: int) -> bool:
    """Whether process `pid` exists on this host (on Windows, where os.kill would stop it: assumed so)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the process is only looked up
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


@contextmanager
def atomic(path: str):
    """Yields a temporary path beside `path`; renamed onto `path` only if the block succeeds."""
    remove_stale(path)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj, path: str, indent: int | None = 2):
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)


def read_json(path: str, what: str = "JSON file") -> dict:
    """A JSON object from `path`; anything else (binary, not JSON, not an object) is one line."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a {what} (binary, not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a {what} (invalid JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a {what} (expected a JSON object, found {type(obj).__name__})")
    return obj


def short(e: Exception, n: int = 80) -> str:
    """The first line of an exception's message, cut to n characters: errors stay one short line."""
    line = (str(e).splitlines() or [type(e).__name__])[0]
    return line if len(line) <= n else line[:n - 3] + "..."


# ----------------------------------------------------------------------------- checkpoint folders

# (our name, reference name) fragments, applied in order in either direction. Order matters:
# ".attention.output.dense." must be seen before ".output.dense.".
_RENAMES = [
    ("bert.embeddings.word.", "bert.embeddings.word_embeddings."),
    ("bert.embeddings.position.", "bert.embeddings.position_embeddings."),
    ("bert.embeddings.token_type.", "bert.embeddings.token_type_embeddings."),
    ("bert.embeddings.norm.", "bert.embeddings.LayerNorm."),
    ("bert.layers.", "bert.encoder.layer."),
    (".attn.query.", ".attention.self.query."),
    (".attn.key.", ".attention.self.key."),
    (".attn.value.", ".attention.self.value."),
    (".attn.out.", ".attention.output.dense."),
    (".attn_norm.", ".attention.output.LayerNorm."),
    (".ffn.up.", ".intermediate.dense."),
    (".ffn.down.", ".output.dense."),
    (".ffn_norm.", ".output.LayerNorm."),
    ("pooler.", "bert.pooler.dense."),
    ("mlm.transform.", "cls.predictions.transform.dense."),
    ("mlm.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm.bias", "cls.predictions.bias"),
    ("qa.", "qa_outputs."),
]

def to_reference_name(name: str) -> str:
    for ours, ref in _RENAMES:
        if name.startswith(ours) or ours.startswith("."):
            name = name.replace(ours, ref)
    return name


def from_reference_name(name: str) -> str:
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # TF-era LayerNorm names
    if name.split(".")[0] in ("embeddings", "encoder", "pooler"):  # saved from a bare BertModel
        name = "bert." + name
    for ours, ref in _RENAMES:
        if name.startswith(ref) or ref.startswith("."):
            name = name.replace(ref, ours)
    return name


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str) -> dict:
    """A .safetensors file is an 8-byte header length, a JSON header, then raw tensors."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (8 + n + o for o in info["data_offsets"])
            if end > len(data):
                raise ValueError(f"tensor {name} ends past the end of the file")
            buf = bytearray(data[start:end])
            t = torch.frombuffer(buf, dtype=_DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=_DTYPES[info["dtype"]])
            tensors[name] = t.reshape(info["shape"])
    except Exception as e:  # struct.error, json, KeyError, reshape: all mean a damaged file
        raise ValueError(f"{path}: cannot read the weights, the file is truncated or corrupt ({short(e)})") from None
    return tensors


def write_safetensors(tensors: dict, path: str):
    names = {v: k for k, v in _DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)


def read_weights(folder: str) -> tuple[dict, str]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".safetensors"):
            return read_safetensors(path), path
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:
            raise ValueError(f"{path}: cannot read the weights, the file is truncated or corrupt ({short(e)})") from None
    raise ValueError(f"{folder}: no model.safetensors or pytorch_model.bin in this folder")


def read_config(folder: str) -> BertConfig:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such checkpoint folder")
    if not os.path.exists(path):
        raise ValueError(f"{path}: missing; a checkpoint folder needs config.json beside its weights")
    d = read_json(path, "BERT config")
    try:
        return BertConfig.from_dict(d)
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"{path}: not a valid BERT config ({short(e)})") from None


def load_pretrained(model_class, folder: str, verbose: bool = True, **overrides):
    """Build `model_class` (Bert, BertMLM, BertClassifier, BertQA) from a checkpoint folder.

    Weights the checkpoint lacks (a task head, say) keep their fresh init and are
    reported; `overrides` change config fields (e.g. num_labels=3, dropout).
    """
    config = read_config(folder)
    for k, v in overrides.items():
        setattr(config, k, v)
    vocab = os.path.join(folder, "vocab.txt")
    if os.path.exists(vocab):
        try:
            with open(vocab, encoding="utf-8") as f:
                n_vocab = sum(1 for _ in f)
        except UnicodeDecodeError:
            raise ValueError(f"{vocab}: not a vocabulary (binary, not UTF-8 text)") from None
        if n_vocab > config.vocab_size:
            raise ValueError(f"{vocab}: {n_vocab} tokens, but config.json has vocab_size {config.vocab_size}")
    weights, path = read_weights(folder)
    model = model_class(config)
    prefix = "" if isinstance(model, BertPreTrainedBase) else "bert."  # a bare encoder
    own = {prefix + k: v for k, v in model.state_dict().items()}
    state = {}
    for ref_name, t in weights.items():
        name = from_reference_name(ref_name)
        if name not in own:
            continue  # another task's head, a buffer, the tied decoder
        if t.shape != own[name].shape and not name.startswith(("bert.", "mlm.")):
            if verbose:  # a task head for another number of labels: this task gets a fresh one
                print(f"{os.path.basename(path)}: {ref_name} has shape {tuple(t.shape)}, this task needs "
                      f"{tuple(own[name].shape)}: initialised it afresh", file=sys.stderr)
            continue
        if t.shape != own[name].shape:
            raise ValueError(f"{path}: weight {ref_name} has shape {tuple(t.shape)}, but config.json "
                             f"gives {tuple(own[name].shape)}")
        state[name] = t
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise ValueError(f"{path}: none of its weights is a BERT weight")
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=False)
    if missing and verbose:
        groups = sorted({k.rsplit(".", 1)[0] for k in missing})
        print(f"{os.path.basename(path)} has no weights for {', '.join(groups)}: initialised them", file=sys.stderr)
    return model


def save_pretrained(model: BertPreTrainedBase, folder: str, vocab_path: str | None = None,
                    lowercase: bool | None = None):
    """Write config.json + model.safetensors (+ vocab.txt, + tokenizer_config.json with the
    vocab's lower-casing) in the reference layout, each file atomically."""
    os.makedirs(folder, exist_ok=True)
    with atomic(os.path.join(folder, "model.safetensors")) as tmp:
        prefix = "" if isinstance(model, BertPreTrainedBase) else "bert."  # a bare encoder
        write_safetensors({to_reference_name(prefix + k): v for k, v in model.state_dict().items()}, tmp)
    write_json(model.config.to_dict(), os.path.join(folder, "config.json"))
    if vocab_path and os.path.abspath(vocab_path) != os.path.abspath(os.path.join(folder, "vocab.txt")):
        with open(vocab_path, "rb") as src, atomic(os.path.join(folder, "vocab.txt")) as tmp:
            with open(tmp, "wb") as dst:
                dst.write(src.read())
    if lowercase is not None:
        write_json({"do_lower_case": lowercase}, os.path.join(folder, "tokenizer_config.json"), indent=None)


# ----------------------------------------------------------------------------- training state

def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the checkpoint, it is truncated or corrupt ({short(e, 60)})") from None


def save_checkpoint(state: dict, path: str):
    with atomic(path) as tmp:
        torch.save(state, tmp)


def rng_states(device) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}


def set_rng_states(rng: dict):
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def save_training_state(path: str, world: int, rank: int, device, **state):
    """Rank 0 writes ckpt.pt: `state` plus every rank's RNG states (a collective: all ranks call it)."""
    rngs = [rng_states(device)]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng_states(device))
    if rank == 0:
        save_checkpoint(dict(state, rng=rngs), path)


def resume(state: dict, path: str, precision: str, world: int, rank: int, model, optimizer, scheduler, scaler, loader,
           search=None) -> tuple[int, float]:
    """Continue exactly from `state` (load_checkpoint(path); the caller has checked its recipe):
    weights, optimizer, schedule, scaler, RNG states, data position. Returns (step, training seconds so far)."""
    if state.get("model_config") != model.config.to_dict():
        raise ValueError(f"{path}: checkpoint of another model configuration; resume with the settings it was "
                         f"trained with (see train_config.json beside it)")
    if len(state["rng"]) != world:
        raise ValueError(f"{path}: checkpoint written by {len(state['rng'])} process(es), not {world}; resume with "
                         f"as many")
    was = state["config"].get("precision", "fp32")  # written before bf16 on CPUs: every CPU run was fp32
    if was != precision:  # --precision auto may choose differently on another machine
        raise ValueError(f"{path}: trained in {was}, but this run would compute in {precision}; resume with "
                         f"--precision {was} (a run does not change precision midway)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    if search:  # the early-bird rule's masks, and network slimming's SGD momenta when it trains the coefficients
        search.early_bird.load_state_dict(state["early_bird"])
        if search.sgd:
            search.sgd.load_state_dict(state["coef_sgd"])
    set_rng_states(state["rng"][rank])
    return state["step"], state["elapsed"]
