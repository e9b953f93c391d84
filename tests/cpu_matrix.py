"""The test suite under each CPU this machine can stand in for: one line per class, pass or fail
and seconds, one class after another; the exit status is 1 if any class failed.

    python tests/cpu_matrix.py                      # the full suite in all 18 classes
    python tests/cpu_matrix.py --fast               # the fast subset (-m "not slow") in each
    python tests/cpu_matrix.py --class avx2/AVX2/1  # one class (.ci/run's laptop without AVX-512)
    python tests/cpu_matrix.py -x tests/test_model.py  # other arguments go to pytest

A class is PyTorch's kernel level (ATEN_CPU_CAPABILITY: default, i.e. no vector instructions, avx2
or avx512), oneDNN's instruction set (ONEDNN_MAX_CPU_ISA: AVX2, AVX512_CORE, or `own`, the
machine's, left unset) and the threads (1 or 4: OMP_NUM_THREADS, and EARLYBERT_TEST_THREADS,
which conftest.py's `threads` fixture sets torch to). A level above the machine's own runs at the
machine's own: on a CPU without AVX-512 the avx512 classes repeat the avx2 ones.
"""
import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CAPABILITIES = ("default", "avx2", "avx512")
ISAS = ("AVX2", "AVX512_CORE", "own")
THREADS = (1, 4)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def class_env(capability: str, isa: str, threads: int) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
           "EARLYBERT_TEST_THREADS": str(threads)}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "own":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


def run_class(capability: str, isa: str, threads: int, pytest_args: list) -> tuple[bool, float, str]:
    """(passed, seconds, pytest's last line, and its failures when it failed) of one class's run."""
    start = time.perf_counter()
    root = os.path.dirname(HERE)
    paths = [] if any(os.path.exists(os.path.join(root, a.split("::")[0])) for a in pytest_args) else [HERE]
    run = subprocess.run([sys.executable, "-m", "pytest", *paths, "-q", *pytest_args], capture_output=True, text=True,
                         env=class_env(capability, isa, threads), cwd=root)
    seconds = time.perf_counter() - start
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    said = lines[-1].strip("= ") if lines else run.stderr.strip()[-300:]
    if run.returncode != 0:  # the whole output kept for the tracebacks
        log = os.path.join(tempfile.gettempdir(), f"cpu_matrix-{capability}-{isa}-{threads}.log")
        with open(log, "w") as f:
            f.write(run.stdout + run.stderr)
        said += "".join(f"\n    {line}" for line in lines if line.startswith(("FAILED", "ERROR"))) + f"\n    (all of it: {log})"
    return run.returncode == 0, seconds, said


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other arguments go to pytest.")
    p.add_argument("--fast", action="store_true", help='only the fast tests: pytest -m "not slow"')
    p.add_argument("--class", dest="classes", action="append", metavar="CAPABILITY/ISA/THREADS",
                   help="run only this class, e.g. avx2/AVX2/1 (repeatable); default: all 18")
    args, pytest_args = p.parse_known_args(argv)
    everything = [f"{c}/{i}/{t}" for c, i, t in itertools.product(CAPABILITIES, ISAS, THREADS)]
    for name in args.classes or []:
        if name not in everything:
            p.error(f"--class {name}: not one of {', '.join(everything)}")
    pytest_args = (["-m", "not slow"] if args.fast else []) + pytest_args
    import torch  # only for the line below: each class runs in a fresh process
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, kernels up to {torch.backends.cpu.get_cpu_capability()}; "
          f"pytest {' '.join(pytest_args) or '(the full suite)'}", flush=True)
    failed, total = 0, 0.0
    for name in args.classes or everything:
        capability, isa, threads = name.split("/")
        passed, seconds, said = run_class(capability, isa, int(threads), pytest_args)
        failed += not passed
        total += seconds
        print(f"{capability:8} {isa:12} {threads} thread(s)  {'pass' if passed else 'FAIL'}  {seconds:6.1f} s  {said}",
              flush=True)
    print(f"{failed} of {len(args.classes or everything)} classes failed, {total / 60:.1f} minutes in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
