"""docs/your-model.md's complete example, run as written on a small synthetic image folder.

Blocks whose first line is `# file: NAME` are written to NAME; `sh` blocks after them run
line by line (`prunewise` as `python -m prunewise`), in order, in one temporary folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOC = Path(__file__).parents[2] / "docs" / "your-model.md"
EXAMPLE = "## A complete example"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    text = DOC.read_text()
    return BLOCK.findall(text[text.index(EXAMPLE) :])


def _image_folder(root: Path, per_class: int = 40) -> None:
    """Three classes told apart by colour, with noise."""
    rng = np.random.default_rng(0)
    colours = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c, colour in enumerate(colours):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-40, 40, (36, 36, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _run(line: str, cwd: Path, env: dict[str, str]) -> None:
    words = shlex.split(line)
    if words[0] == "cd":  # `cd DIR && python ...`
        cwd, rest = cwd / words[1], line.split("&&", 1)[1]
        words = shlex.split(rest)
    if words[0] == "prunewise":
        words = [sys.executable, "-m", "prunewise", *words[1:]]
    elif words[0] == "python":
        words = [sys.executable, *words[1:]]
    done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def test_the_complete_example_runs_as_written(tmp_path: Path) -> None:
    blocks = _blocks()
    assert [lang for lang, _ in blocks].count("sh") >= 3
    _image_folder(tmp_path / "images")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DOC.parents[1])}
    for lang, body in blocks:
        first = body.splitlines()[0]
        if first.startswith("# file: "):
            path = tmp_path / first.removeprefix("# file: ").strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            continue
        assert lang == "sh", f"a {lang} block without `# file:` in {DOC.name}"
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip():
                _run(line, tmp_path, env)
    for run in ("mine", "own"):
        assert (tmp_path / "runs" / run / "summary.json").is_file()
        assert (tmp_path / "runs" / run / "report.html").is_file()
    assert "balanced accuracy" in (tmp_path / "runs" / "own" / "report.md").read_text()
    exported = list((tmp_path / "runs" / "mine" / "deploy").glob("*/*.onnx"))
    assert len(exported) >= 2  # the model from the user's file, float and INT8 in ONNX


@pytest.mark.parametrize("name", ["net.py", "train.py", "elsewhere/use.py", "own_loop.py"])
def test_every_file_of_the_example_is_in_the_doc(name: str) -> None:
    assert any(body.startswith(f"# file: {name}\n") for _, body in _blocks())
