# SPDX-License-Identifier: Apache-2.0
"""Every Python code block of README.md and docs/*.md runs, as written.

A page's blocks run in order in one namespace (a later block may use an earlier one's
names), in a fresh Python process per page, in an empty temporary directory, so that a
block that patches a class or sets an environment variable cannot reach the other pages
or the other tests.  Each block is one test, reported as ``PAGE:LINE``; a failing block
fails with its traceback, whose frames name the page and its lines.

A block that needs more than a CPU says so in an HTML comment on the line just before its
fence (invisible on GitHub and in the built docs):

    <!-- docs-block: gpu -->            needs a CUDA GPU (and gaussfield's CUDA kernels):
                                        skipped here, run by `benchmarks/gpu_session.sh
                                        docsblocks` on the GPU machine
    <!-- docs-block: processes -->      several processes: runs alone, under
                                        `torchrun --nproc-per-node 2` on CPUs (gloo;
                                        no GPU is visible to it)
    <!-- docs-block: needs plyfile -->  an optional package: skipped where it is missing

(comma-separated for several).  A block skipped on one machine must not define names that
a later block of its page uses.  Keep blocks small: the whole file runs in well under a
minute on two cores.
"""
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^\s*<!--\s*docs-block:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)(.*)$")
PYTHON = {"python", "py", "python3"}
PAGE_TIMEOUT_S = 300


@dataclass
class Block:
    page: Path
    line: int                      # of the first line of code (the fence's line + 1)
    code: str
    marks: List[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def needs(self) -> List[str]:
        return [m.split(None, 1)[1] for m in self.marks if m.startswith("needs ")]


def parse_marks(text: str, where: str) -> List[str]:
    marks = [m.strip() for m in text.split(",") if m.strip()]
    for m in marks:
        if m not in ("gpu", "processes") and not re.fullmatch(r"needs [A-Za-z_][\w.]*", m):
            raise ValueError(f"{where}: unknown docs-block mark {m!r} "
                             "(gpu, processes or 'needs MODULE')")
    return marks


def python_blocks(page: Path) -> List[Block]:
    """The fenced Python blocks of a Markdown page, with their marks."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).lower()
        start = i + 1
        j = start
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        if info in PYTHON:
            k = i - 1
            marks = []
            if k >= 0 and MARK.match(lines[k]):
                marks = parse_marks(MARK.match(lines[k]).group(1), f"{page.name}:{k + 1}")
            code = textwrap.dedent("\n".join(l[len(indent):] if l.startswith(indent) else l
                                             for l in lines[start:j]))
            blocks.append(Block(page, start + 1, code + "\n", marks))
        elif "python" in info or "python" in m.group(4).lower().split()[:1]:
            raise ValueError(f"{page.name}:{i + 1}: write Python blocks as ```python "
                             f"(got {lines[i].strip()!r}), so that they are run")
        i = j + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in python_blocks(page)]

# The runner: executes a page's blocks in order in one namespace, each compiled with its
# page's name and lines (so tracebacks point into the page), and writes one result per
# block to the JSON file named by argv[2].
RUNNER = r'''
import importlib.util, json, sys, traceback
blocks = json.load(open(sys.argv[1]))
results = []
gpu = None
def have_gpu():
    global gpu
    if gpu is None:
        import torch, gaussfield
        gpu = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
            "gaussfield::gaussian_field", "CUDA")
    return gpu
namespace = {"__name__": "__main__"}
failed = None
for b in blocks:
    missing = [m for m in b["needs"] if importlib.util.find_spec(m) is None]
    if failed:
        results.append({"status": "skipped", "reason": f"an earlier block of the page failed ({failed})"})
    elif missing:
        results.append({"status": "skipped", "reason": f"needs {', '.join(missing)} (not installed)"})
    elif "gpu" in b["marks"] and not have_gpu():
        results.append({"status": "skipped", "reason": "needs a CUDA GPU (runs in benchmarks/gpu_session.sh docsblocks)"})
    else:
        try:
            exec(compile("\n" * (b["line"] - 1) + b["code"], b["page"], "exec"), namespace)
            results.append({"status": "ran"})
        except BaseException as e:  # the traceback from the block's own frame on
            failed = f'{b["page"]}:{b["line"]}'
            results.append({"status": "failed", "traceback": "".join(
                traceback.format_exception(type(e), e, e.__traceback__.tb_next))})
    json.dump(results, open(sys.argv[2], "w"))
'''

# A processes block: run on every rank under torchrun; each rank writes its outcome and
# leaves with os._exit (torch 2.13's gloo threads can abort an interpreter's shutdown).
# A block that ends with gaussfield.distributed.shutdown() (as users' scripts should)
# leaves there: its outcome is written just before the real shutdown runs.
RANK_RUNNER = r'''
import json, os, sys, traceback
b = json.load(open(sys.argv[1]))
out = f"{sys.argv[2]}.{os.environ.get('RANK', '0')}"
import gaussfield.distributed as _gd
_real_shutdown = _gd.shutdown
def _recording_shutdown(exit_code=0):
    json.dump({"status": "ran" if exit_code == 0 else "failed",
               "traceback": f"shutdown({exit_code!r})"}, open(out, "w"))
    _real_shutdown(exit_code)
_gd.shutdown = _recording_shutdown
try:
    exec(compile("\n" * (b["line"] - 1) + b["code"], b["page"], "exec"), {"__name__": "__main__"})
    result = {"status": "ran"}
except BaseException as e:
    result = {"status": "failed", "traceback": "".join(
        traceback.format_exception(type(e), e, e.__traceback__.tb_next))}
json.dump(result, open(out, "w"))
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
'''


def environment():
    env = dict(os.environ)
    # the caller's GAUSSFIELD_* settings would change what the blocks show
    for name in [n for n in env if n.startswith("GAUSSFIELD_")]:
        del env[name]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def as_json(b: Block) -> dict:
    return {"page": str(b.page.relative_to(ROOT)), "line": b.line, "code": b.code,
            "marks": b.marks, "needs": b.needs}


def _run_page(page: Path) -> dict:
    """{line: result} of a page's single-process blocks."""
    blocks = [b for b in ALL_BLOCKS if b.page == page and "processes" not in b.marks]
    with tempfile.TemporaryDirectory(prefix="docs-blocks-") as work:
        src, out = Path(work, "blocks.json"), Path(work, "results.json")
        src.write_text(json.dumps([as_json(b) for b in blocks]))
        run_dir = Path(work, "cwd")
        run_dir.mkdir()
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(src), str(out)], cwd=run_dir,
                              env=environment(), capture_output=True, text=True,
                              timeout=PAGE_TIMEOUT_S)
        results = json.loads(out.read_text()) if out.exists() else []
    by_line = {}
    for b, r in zip(blocks, results):
        by_line[b.line] = r
    for b in blocks[len(results):]:  # the process died inside this block
        by_line[b.line] = {"status": "failed", "traceback": "the page's process died\n" + describe(proc)}
    return by_line


def _run_processes_block(b: Block) -> dict:
    """The block on two ranks under torchrun, on CPUs: the first failure, or ran."""
    with tempfile.TemporaryDirectory(prefix="docs-blocks-") as work:
        src, out = Path(work, "block.json"), Path(work, "result")
        src.write_text(json.dumps(as_json(b)))
        script = Path(work, "rank.py")
        script.write_text(RANK_RUNNER)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node=2", str(script), str(src), str(out)],
                              cwd=work, env={**environment(), "CUDA_VISIBLE_DEVICES": ""},
                              capture_output=True, text=True, timeout=PAGE_TIMEOUT_S)
        if proc.returncode != 0:
            return {"status": "failed", "traceback": f"torchrun: {describe(proc)}"}
        for rank in (0, 1):
            path = Path(f"{out}.{rank}")
            if not path.exists():
                return {"status": "failed", "traceback": f"rank {rank} wrote no result\n{describe(proc)}"}
            result = json.loads(path.read_text())
            if result["status"] != "ran":
                return {"status": "failed", "traceback": f"on rank {rank}:\n{result['traceback']}"}
    return {"status": "ran"}


class Jobs:
    """Page runs and processes blocks as futures, each started once: {page or block.where:
    future}."""

    def __init__(self, pool):
        self.pool, self.started = pool, {}

    def start(self, b: Block):
        if "processes" in b.marks:
            key, fn, arg = b.where, _run_processes_block, b
        else:
            key, fn, arg = b.page, _run_page, b.page
        if key not in self.started:
            self.started[key] = self.pool.submit(fn, arg)
        return self.started[key]

    def result(self, b: Block) -> dict:
        result = self.start(b).result()
        return result if "processes" in b.marks else result[b.line]


@pytest.fixture(scope="module")
def jobs(request):
    """Every selected page and processes block starts at once, as many at a time as there
    are cores (most of a page's time is starting Python and importing torch).  Under
    pytest-xdist, where each worker sees every item but runs a share of them, each starts
    when its first block is reached instead."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        j = Jobs(pool)
        if "PYTEST_XDIST_WORKER" not in os.environ:
            for item in request.session.items:
                params = getattr(getattr(item, "callspec", None), "params", {})
                if item.module is sys.modules[__name__] and "block" in params:
                    j.start(params["block"])
        yield j


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
def test_block_runs(block, jobs):
    if "processes" in block.marks and "gpu" in block.marks:
        raise ValueError(f"{block.where}: a processes block runs on CPUs (gloo); not gpu too")
    result = jobs.result(block)
    if result["status"] == "skipped":
        pytest.skip(f"{block.where}: {result['reason']}")
    if result["status"] == "failed":
        pytest.fail(f"{block.where}: the block failed\n{result['traceback']}", pytrace=False)


def test_the_pages_have_blocks():
    """The collector finds the blocks (a parser broken into finding none would pass)."""
    counts = {p.name: sum(b.page == p for b in ALL_BLOCKS) for p in PAGES}
    assert counts["README.md"] >= 2, counts
    assert sum(counts.values()) >= 20, counts
    marked = [b.where for b in ALL_BLOCKS if b.marks]
    assert len(marked) <= 6, f"more than a few marked blocks: {marked}"
