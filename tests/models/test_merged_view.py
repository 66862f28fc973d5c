"""An adapter's merged view (a whole model written to a temp folder so that plain HF
loaders can read it) is removed when the process that made it exits: each one used to
stay in /tmp (218 of them, up to 517 MB each, after a day of eval and serve runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.train.tiny import make_model, make_tokenizer

SCRIPT = """
import sys
from pathlib import Path
from lmops.models.loading import merged_view
out = merged_view(Path(sys.argv[1]), None)
assert (out / "config.json").exists()
print(out, flush=True)
if len(sys.argv) > 2:  # killed outright: no exit handler runs
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _adapter(tmp_path: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_model(tmp_path / "base", make_tokenizer(tmp_path / "tok"))
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), lora).save_pretrained(
        str(adapter)
    )
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(adapter))
    (adapter / "lmops_base.json").write_text(json.dumps({"base_path": str(base)}))
    return adapter


def _merge(tmp_path: Path, adapter: Path, *kill: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(adapter), *kill],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_merged_view_is_gone_when_its_process_exits(tmp_path: Path) -> None:
    r = _merge(tmp_path, _adapter(tmp_path))
    assert r.returncode == 0, r.stderr
    made = Path(r.stdout.strip().splitlines()[-1])
    assert made.name.startswith("lmops-merged-") and made.parent == tmp_path
    assert not made.exists()


def test_the_view_of_a_killed_process_is_removed_by_the_next_merge(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path)
    killed = _merge(tmp_path, adapter, "kill")
    assert killed.returncode == -9
    left = Path(killed.stdout.strip().splitlines()[-1])
    assert (left / "config.json").exists()  # SIGKILL: no exit handler ran
    # a view whose process still runs (ours) is left alone
    live = tmp_path / f"lmops-merged-{os.getpid()}-abc"
    live.mkdir()
    r = _merge(tmp_path, adapter)
    assert r.returncode == 0, r.stderr
    assert not left.exists() and live.exists()
