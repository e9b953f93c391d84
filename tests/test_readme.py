"""README.md and docs/results.md cannot drift from the code: every `--flag` they give to
`python train.py`, `finetune.py`, `bench.py`, `ticket.py` (per subcommand) or `reproduce.py` is
one that script takes, every repository file they name exists (a path under one of the
repository's folders, or a script at its top), every `file.py:name` they point a reader to is
defined in that file, and every link they make leads to a file and heading that are there."""
import contextlib
import importlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "docs/results.md")
TEXT = {doc: open(os.path.join(ROOT, doc), encoding="utf-8").read() for doc in DOCS}
README = TEXT["README.md"]
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


def commands(text: str = README) -> list[tuple[str, str | None, set]]:
    """(script, ticket.py's subcommand or None, the flags given) for each `python SCRIPT.py ...` or
    `torchrun ... SCRIPT.py ...` in a document's code; a `#` comment ends a command."""
    found = []
    pattern = rf"(?:python|torchrun(?:\s+--\S+)*)\s+({'|'.join(SCRIPTS)})\.py\b([^#]*)"
    for code in code_spans(text):
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
    assert {script for script, _, _ in found} == set(SCRIPTS) and len(found) > 20  # the test reads them all
    assert {sub for script, sub, _ in found if script == "ticket"} >= set(TICKET_COMMANDS)
    assert len(found + commands(TEXT["docs/results.md"])) > 30  # and the results' commands too
    known = {}
    for doc in DOCS:
        for script, sub, flags in commands(TEXT[doc]):
            known.setdefault((script, sub), flags_of(script, sub))
            unknown = flags - known[script, sub]
            assert not unknown, f"{doc}: `{script}.py{' ' + sub if sub else ''}` has no {', '.join(sorted(unknown))}"


def named_paths(text: str) -> set:
    """The repository paths a document names: under one of its folders, or a script at its top. Folders that
    runs write (out/, runs/: .gitignore's) are not the repository's, though a user's clone has them."""
    ignored = {line.strip().strip("/") for line in open(os.path.join(ROOT, ".gitignore")) if line.strip().endswith("/")}
    folders = {d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d))
               and not d.startswith((".", "_")) and d not in ignored}
    paths = re.findall(r"(?<![\w./<>-])((?:[\w.-]+/)*[\w.-]+\.(?:py|md|txt|png|json|sh))(?![\w/-])", text)
    return {p for p in paths if p.split("/")[0] in folders or ("/" not in p and p.endswith(".py"))}


def test_every_repository_file_the_readme_names_exists():
    assert {"docs/mask_distances.png", "tests/vocab.txt", "train.py", "docs/results.md"} <= named_paths(README)
    assert {"bench.py", "train.py"} <= named_paths(TEXT["docs/results.md"])  # the test sees them
    for doc in DOCS:
        missing = sorted(p for p in named_paths(TEXT[doc]) if not os.path.exists(os.path.join(ROOT, p)))
        assert not missing, f"{doc} names files the repository does not have: {', '.join(missing)}"


def test_every_function_the_readme_points_to_is_there():
    """`experiment.py:efficient_model`, `ticket.py:EarlyBird.update`: each name is defined in that file."""
    pointers = re.findall(r"\b(\w+\.py):([A-Za-z_][\w.]*\w)", README)
    assert len(pointers) > 15
    for doc in DOCS:
        for path, name in re.findall(r"\b(\w+\.py):([A-Za-z_][\w.]*\w)", TEXT[doc]):
            source = open(os.path.join(ROOT, path), encoding="utf-8").read()
            for part in name.split("."):
                assert re.search(rf"^\s*(?:def|class) {part}\b", source, re.M), f"{doc}: {path} has no {name}"


def anchors(text: str) -> set:
    """The #anchors of a document's headings, as GitHub makes them: lower case, punctuation
    dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_leads_somewhere():
    """[text](target) and ![figure](target): the file, relative to the document, and its heading."""
    seen = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", TEXT[doc]):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
            assert os.path.exists(file), f"{doc}: the link {target} leads to no file"
            if anchor:
                text = TEXT.get(os.path.relpath(file, ROOT)) or open(file, encoding="utf-8").read()
                assert anchor in anchors(text), f"{doc}: the link {target} leads to no heading"
            seen += 1
    assert seen > 10  # the test reads them all
