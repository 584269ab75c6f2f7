# SPDX-License-Identifier: Apache-2.0
"""docs/distributed-example.md's script, as it stands on the page, under torchrun on two
gloo ranks, and gaussfield.distributed.shutdown(), which ends it: a barrier, the group
destroyed, and an exit without the interpreter's finalization (where torch 2.13's gloo
threads can abort a finished run), or an ordinary exit without a process group."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import gaussfield
from gaussfield.distributed import shutdown

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build of torch")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "distributed-example.md"
RUNS = 3  # 20 of 20 by hand (the page); a few here, to keep the suite fast


def _torchrun(script: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _page_script() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page has one Python block: the script"
    return blocks[0]


@needs_gloo
@pytest.mark.parametrize("run", range(RUNS))
def test_the_pages_script_runs_as_written_on_two_gloo_ranks(tmp_path, run):
    script = tmp_path / "train_sharded.py"
    script.write_text(_page_script())
    done = _torchrun(script, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [float(v) for v in re.findall(r"step \d+: loss ([0-9.]+)", done.stdout)]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], done.stdout  # rank 0 alone prints; it trains
    field = gaussfield.GaussianField(2_000)
    field.load_state_dict(torch.load(tmp_path / "field.pt"))  # the whole field, gathered


@needs_gloo
def test_shutdown_under_torchrun_exits_with_the_code_and_without_finalization(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(f"""
import atexit, os, sys
import torch.distributed as dist
from gaussfield.distributed import shutdown
dist.init_process_group("gloo")
rank = dist.get_rank()
atexit.register(lambda: open(os.path.join({str(tmp_path)!r}, f"atexit{{rank}}"), "w").close())
print(f"rank {{rank}} done", flush=True)
shutdown(3 if rank == 1 else 0)
print("after shutdown", flush=True)
""")
    done = _torchrun(script, tmp_path)
    assert done.returncode != 0  # rank 1's 3 makes the run fail, as it should
    assert re.search(r"exitcode\s*:\s*3\b", done.stderr), done.stderr  # torchrun's summary
    assert "rank 0 done" in done.stdout and "rank 1 done" in done.stdout
    assert "after shutdown" not in done.stdout
    assert not list(tmp_path.glob("atexit*"))  # no interpreter finalization


def test_shutdown_without_a_process_group_is_an_ordinary_exit(tmp_path):
    code = ("import atexit; from gaussfield.distributed import shutdown; "
            f"atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').close()); shutdown(5)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    assert (tmp_path / "atexit").exists()
    with pytest.raises(TypeError, match="exit_code must be an integer, got str"):
        shutdown("0")
