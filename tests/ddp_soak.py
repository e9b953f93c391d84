"""Repeat the two-process DDP run of tests/test_train.py many times, to catch a rare failure
(a rank that aborts while the processes tear down, a hang) that one test run would miss.

    python tests/ddp_soak.py            # 100 runs (about 20 s each on a 2-core CPU: 35 minutes)
    python tests/ddp_soak.py 3          # a quick check

Each run is `torchrun --nproc-per-node=2 train.py --phase search ...` with the settings of
test_ddp_two_processes_match_one_process (2 CPU processes, gloo, a tiny model, 6 steps). A run
fails when it exits non-zero (or hangs past the timeout) or leaves no summary.json or model/.
Prints `N runs, F failed` and exits with 1 if any failed. Not collected by pytest (no test_ prefix).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from helpers import DDP_TWO, VOCAB, small_corpus_text, tiny, torchrun_two_processes  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=int, nargs="?", default=100, help="how many runs [default: 100]")
    p.add_argument("--timeout", type=float, default=300, help="seconds before a run counts as hung [default: 300]")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ddp_soak") as tmp:
        text = os.path.join(tmp, "small_corpus.txt")
        with open(text, "w", encoding="utf-8") as f:
            f.write(small_corpus_text())
        cfg = tiny((text, VOCAB), os.path.join(tmp, "out"), **DDP_TWO)
        run_dir = os.path.join(cfg.out_dir, "search")
        failed = 0
        for i in range(1, args.runs + 1):
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time; the prepared corpus is kept
            try:
                run = torchrun_two_processes(cfg, timeout=args.timeout)
                why = f"exit status {run.returncode}" if run.returncode else \
                    "no summary.json" if not os.path.exists(os.path.join(run_dir, "summary.json")) else \
                    "no model/" if not os.path.isdir(os.path.join(run_dir, "model")) else None
                tail = run.stderr
            except subprocess.TimeoutExpired as e:
                why, tail = f"hung (killed after {args.timeout:.0f} s)", e.stderr or ""
            if why:
                failed += 1
                print(f"run {i}: FAILED, {why}; the end of its stderr:\n" + "\n".join(tail.splitlines()[-15:]),
                      file=sys.stderr)
            print(f"run {i}/{args.runs}: {'failed' if why else 'ok'} ({failed} failed so far)", flush=True)
    print(f"{args.runs} runs, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
