"""Every command line in the docs runs as written.

Covered: each ```bash block of ``docs/*.md`` and ``README.md``, and each ```python block of
``docs/*.md``. The blocks of one page run in order in one fresh folder (a later block may use
what an earlier one made), with the venv's ``bin`` first on PATH, so ``compatindex`` and
``python`` are the ones under test. A block passes when it exits 0.

An HTML comment on the line before a block's fence changes how it runs:

- ``<!-- docs-test: skip (REASON) -->``: not run. The reason is required; use it for blocks that
  need the network or a Qdrant server, run for minutes, or show a shape rather than a program.
- ``<!-- docs-test: quick-start files -->``: run in a folder of its own that holds the quick-start
  inputs (``vectors.npy``, ``ids.txt``, ``labels.txt``, ``queries.npy``, 64 dims).

Command blocks in the docs must be fenced as ``bash`` (not ``sh``/``console``), so none escapes.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
RUN_LANGS = {"bash", "python"}
UNTESTED_SHELL_LANGS = {"sh", "shell", "console", "zsh", "shell-session"}
MARKER = re.compile(r"^\s*<!--\s*docs-test:(.*?)-->\s*$")
SKIP = re.compile(r"^skip\s*\((.*)\)$")
QUICK_START = "quick-start files"
TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: str | None  # the marker's text, None when there is none

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        m = SKIP.match(self.directive or "")
        return m.group(1).strip() if m else None

    @property
    def runs(self) -> bool:
        """Whether the docs tests run this block (python only in docs/)."""
        if self.lang == "bash":
            return True
        return self.lang == "python" and self.page.parent.name == "docs"


@dataclasses.dataclass(frozen=True)
class Run:
    block: Block
    returncode: int | None  # None: skipped, or not reached after a failure
    stdout: str = ""
    stderr: str = ""


def parse(page: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page, and the problems with its docs-test markers."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # (line, directive) of a marker awaiting its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line)
        if m:
            if pending is not None:
                problems.append(f"{page.name}:{pending[0]}: docs-test marker not followed by a code block")
            pending = (i + 1, m.group(1).strip())
            i += 1
            continue
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence:
            lang = fence.group(1).lower()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                problems.append(f"{page.name}:{i + 1}: unclosed code block")
                break
            directive = pending[1] if pending is not None else None
            blocks.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n", directive))
            pending = None
            i = end + 1
            continue
        if line.strip() and pending is not None:
            problems.append(f"{page.name}:{pending[0]}: docs-test marker not followed by a code block")
            pending = None
        i += 1
    if pending is not None:
        problems.append(f"{page.name}:{pending[0]}: docs-test marker not followed by a code block")
    for b in blocks:
        if b.directive is None:
            continue
        if not b.runs:
            problems.append(f"{b.where}: docs-test marker on a ```{b.lang} block, which is never run")
        elif b.directive.startswith("skip") and not b.skip_reason:
            problems.append(f"{b.where}: skipped without a reason (write `skip (why)`)")
        elif b.directive != QUICK_START and b.skip_reason is None:
            problems.append(f"{b.where}: unknown docs-test directive {b.directive!r}")
    if page.parent.name == "docs":
        problems += [f"{b.where}: a ```{b.lang} block is never run; fence commands as ```bash"
                     for b in blocks if b.lang in UNTESTED_SHELL_LANGS]
    return blocks, problems


def write_quick_start_files(folder: Path) -> None:
    """The inputs of the quick start: 1,000 vectors of 64 dims with ids and labels, 5 queries."""
    rng = np.random.default_rng(0)
    np.save(folder / "vectors.npy", rng.standard_normal((1000, 64)).astype("float32"))
    (folder / "ids.txt").write_text("".join(f"{i}\n" for i in range(1000)))
    (folder / "labels.txt").write_text("".join(f"class{i % 10}\n" for i in range(1000)))
    np.save(folder / "queries.npy", rng.standard_normal((5, 64)).astype("float32"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")  # small examples: more threads only spin on a shared machine
    return env


def run_block(block: Block, cwd: Path) -> Run:
    if block.lang == "bash":
        argv, stdin = ["bash", "-e", "-o", "pipefail", "-c", block.code], None
    else:
        argv, stdin = [sys.executable, "-"], block.code
    proc = subprocess.run(argv, input=stdin, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return Run(block, proc.returncode, proc.stdout, proc.stderr)


_WORK = Path(tempfile.mkdtemp(prefix="compatindex-docs-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def run_page(name: str) -> tuple[Run, ...]:
    """Run a page's blocks (``name`` relative to the repository root) once per test session.

    Returns one :class:`Run` per block the docs tests cover; after a failure the page's later
    blocks are not run (returncode None).
    """
    page = ROOT / name
    blocks, _ = parse(page)
    folder = _WORK / name.replace("/", "__")
    folder.mkdir(parents=True)
    runs: list[Run] = []
    failed = False
    for n, b in enumerate(x for x in blocks if x.runs):
        if failed or b.skip_reason is not None:
            runs.append(Run(b, None))
            continue
        cwd = folder
        if b.directive == QUICK_START:
            cwd = folder / f"quick-start-{n}"
            cwd.mkdir()
            write_quick_start_files(cwd)
        r = run_block(b, cwd)
        runs.append(r)
        failed = r.returncode != 0
    return tuple(runs)


def blocks_under(page: Path, heading: str, lang: str = "bash") -> list[Block]:
    """The ```lang blocks of a page between ``heading`` and the next heading of its level."""
    text = page.read_text().splitlines()
    start = text.index(heading)
    level = heading.split(" ")[0]
    end = next((i for i in range(start + 1, len(text)) if text[i].startswith(level + " ")), len(text))
    return [b for b in parse(page)[0] if start < b.line <= end and b.lang == lang]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_markers_are_well_formed():
    problems = [p for page in PAGES for p in parse(page)[1]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", [_page_id(p) for p in PAGES])
def test_page_runs(name):
    for r in run_page(name):
        if r.returncode is None:
            continue
        assert r.returncode == 0, (
            f"{r.block.where}: ```{r.block.lang} block exited {r.returncode}\n--- block ---\n{r.block.code}"
            f"--- stdout (end) ---\n{r.stdout[-3000:]}\n--- stderr (end) ---\n{r.stderr[-3000:]}")


def test_skipped_blocks_are_counted_and_explained():
    """Every block that does not run says why; the count is printed with -s / in the report."""
    covered = [b for page in PAGES for b in parse(page)[0] if b.runs]
    skipped = [b for b in covered if b.skip_reason is not None]
    markers = sum(1 for page in PAGES for line in page.read_text().splitlines()
                  if MARKER.match(line) and SKIP.match(MARKER.match(line).group(1).strip()))
    assert len(skipped) == markers
    assert all(b.skip_reason for b in skipped)
    assert len(skipped) < len(covered) / 2, "most docs blocks should run"
    print(f"docs blocks: {len(covered)} covered, {len(covered) - len(skipped)} run, {len(skipped)} skipped:")
    for b in skipped:
        print(f"  {b.where}: {b.skip_reason}")


def test_readme_quick_start_runs_on_the_quick_start_files():
    (block,) = blocks_under(ROOT / "README.md", "## Quick start")
    assert block.directive == QUICK_START and block.skip_reason is None
    run = next(r for r in run_page("README.md") if r.block == block)
    assert run.returncode == 0, run.stderr
    hits = run.stdout.strip().splitlines()[-5:]
    assert all('"ids": [' in h for h in hits)


def test_api_examples_run():
    runs = [r for r in run_page("docs/api.md") if r.block.lang == "python"]
    assert any(r.returncode == 0 for r in runs), "docs/api.md should hold at least one runnable example"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_resolve():
    """Links between the docs (and from the README) point at files and headings that exist."""
    bad = []
    for page in PAGES:
        text = page.read_text()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", dest.read_text(), flags=re.S), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    bad.append(f"{page.name}: {target} (no such heading)")
    assert bad == [], "\n".join(bad)


NOTES = re.compile(r"\b(?:design|methods|ecosystem|style|data)\.md\b|shared[/]notes|(?:design|research) notes")


def test_no_citations_of_private_notes():
    """Docstrings and docs cite the docs/ pages or papers by title, never the team's private notes."""
    skip = {".venv", ".git", "compatindex.egg-info", "__pycache__", "shared"}  # shared/: the notes themselves
    bad = []
    for path in ROOT.rglob("*"):
        if path.suffix not in {".py", ".md", ".sh"} or skip & set(path.relative_to(ROOT).parts):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if NOTES.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == [], "\n".join(bad)
