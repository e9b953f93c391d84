"""README.md cannot drift from the code: every `--flag` it gives to `python train.py`,
`finetune.py`, `bench.py`, `ticket.py` (per subcommand) or `reproduce.py` is one that script
takes, every repository file it names exists (a path under one of the repository's folders, or
a script at its top), and every `file.py:name` it points a reader to is defined in that file."""
import contextlib
import importlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
SCRIPTS = ("train", "finetune", "bench", "ticket", "reproduce")
TICKET_COMMANDS = ("show", "apply", "compare", "distances")


def code_spans(text: str) -> list[str]:
    """The README's code: each line of a fenced block (a trailing `\\` joins the next), and each
    inline `span`, whose line breaks are spaces."""
    text = re.sub(r"\\\n\s*", " ", text)
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return [line for block in blocks for line in block.splitlines()] + [
        " ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def commands() -> list[tuple[str, str | None, set]]:
    """(script, ticket.py's subcommand or None, the flags given) for each `python SCRIPT.py ...` or
    `torchrun ... SCRIPT.py ...` in the README's code; a `#` comment ends a command."""
    found = []
    pattern = rf"(?:python|torchrun(?:\s+--\S+)*)\s+({'|'.join(SCRIPTS)})\.py\b([^#]*)"
    for code in code_spans(README):
        for script, rest in re.findall(pattern, code):
            words = rest.split()
            sub = words[0] if script == "ticket" and words and words[0] in TICKET_COMMANDS else None
            found.append((script, sub, set(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))))
    return found


def flags_of(script: str, sub: str | None) -> set:
    """What `python SCRIPT.py [SUB] --help` lists (its description's own examples included)."""
    module = importlib.import_module(script)
    entry = getattr(module, "parse_args") if script == "train" else module.main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry([sub, "--help"] if sub else ["--help"])
    return set(re.findall(r"--[a-z][\w-]*", out.getvalue()))


def test_every_flag_the_readme_gives_a_script_exists():
    found = commands()
    assert {script for script, _, _ in found} == set(SCRIPTS) and len(found) > 30  # the test reads them all
    assert {sub for script, sub, _ in found if script == "ticket"} >= set(TICKET_COMMANDS)
    known = {}
    for script, sub, flags in found:
        known.setdefault((script, sub), flags_of(script, sub))
        unknown = flags - known[script, sub]
        assert not unknown, f"README: `{script}.py{' ' + sub if sub else ''}` has no {', '.join(sorted(unknown))}"


def test_every_repository_file_the_readme_names_exists():
    folders = {d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)) and not d.startswith((".", "_"))}
    paths = re.findall(r"(?<![\w./<>-])((?:[\w.-]+/)*[\w.-]+\.(?:py|md|txt|png|json|sh))(?![\w/-])", README)
    named = {p for p in paths if p.split("/")[0] in folders or ("/" not in p and p.endswith(".py"))}
    assert {"docs/mask_distances.png", "tests/vocab.txt", "train.py"} <= named  # the test sees them
    missing = sorted(p for p in named if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, f"README names files the repository does not have: {', '.join(missing)}"


def test_every_function_the_readme_points_to_is_there():
    """`train.py:efficient_model`, `ticket.py:EarlyBird.update`: each name is defined in that file."""
    pointers = re.findall(r"\b(\w+\.py):([A-Za-z_][\w.]*\w)", README)
    assert len(pointers) > 15
    for path, name in pointers:
        source = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for part in name.split("."):
            assert re.search(rf"^\s*(?:def|class) {part}\b", source, re.M), f"README: {path} has no {name}"
