"""The notebooks are the source of truth: the exported module, the clean state and the README must follow them."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_project(dst: Path) -> Path:
    "A copy of the parts of the project nbdev reads and writes."
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT/name, dst/name)
    shutil.copytree(ROOT/'nbs', dst/'nbs', ignore=shutil.ignore_patterns('_out', '.ipynb_checkpoints'))
    shutil.copytree(ROOT/'datacreator_nb', dst/'datacreator_nb', ignore=shutil.ignore_patterns('__pycache__'))
    return dst


def _differences(a: Path, b: Path, pattern: str) -> list[str]:
    "Files matching `pattern` that differ between folders `a` and `b`, or exist in only one."
    names = {p.relative_to(a) for p in a.glob(pattern)} | {p.relative_to(b) for p in b.glob(pattern)}
    return sorted(str(n) for n in names if not ((a/n).exists() and (b/n).exists() and filecmp.cmp(a/n, b/n, shallow=False)))


def test_there_are_notebooks():
    assert len(list((ROOT/'nbs').glob('*.ipynb'))) >= 2


def test_exported_module_matches_notebooks(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([BIN/'nbdev_export'], cwd=copy, check=True, capture_output=True)
    diff = _differences(ROOT/'datacreator_nb', copy/'datacreator_nb', '*.py')
    assert not diff, f"datacreator_nb/ differs from the notebooks in {diff}: edit the notebook, run nbdev_export, commit both"


def test_notebooks_are_clean(tmp_path):
    copy = _copy_project(tmp_path)
    subprocess.run([BIN/'nbdev_clean', '--fname', copy/'nbs'], cwd=copy, check=True, capture_output=True)
    diff = _differences(ROOT/'nbs', copy/'nbs', '*.ipynb')
    assert not diff, f"notebooks not clean: {diff}: run nbdev_clean and commit"


def test_readme_is_rendered_from_index(tmp_path):
    out = subprocess.run([BIN/'jupyter', 'nbconvert', '--to', 'markdown', '--stdout', '--log-level=ERROR', ROOT/'nbs'/'index.ipynb'],
                         check=True, capture_output=True, text=True).stdout
    assert out == (ROOT/'README.md').read_text(encoding='utf-8'), "README.md differs from nbs/index.ipynb: run `make readme` and commit"


def test_readme_names_the_two_commands():
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    assert 'make demo' in readme and 'make test' in readme
    assert 'make test' in (ROOT/'.ci'/'run').read_text()
