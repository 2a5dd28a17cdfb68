"""The numbered notebooks out of the box: a Colab install cell that is a no-op elsewhere, defaults that point at the demo."""
import ast
import json
import os
import subprocess
import sys
import tomllib
import types

import pytest

from conftest import REPO
from faceseg_lib.pipeline import DEMO_OUT, DEMO_RECIPE, demo_data_paths

NOTEBOOKS = sorted((REPO / 'notebooks').glob('[0-9][0-9]_*.ipynb'))
REPO_URL = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['urls']['Repository']


def _cells(nb):
    return json.loads(nb.read_text())['cells']


def _source(cell) -> str:
    return ''.join(cell['source'])


def _parameters(nb) -> dict:
    cell = next(c for c in _cells(nb) if 'parameters' in c.get('metadata', {}).get('tags', []))
    return {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(_source(cell)).body}


def _run_colab_cell(nb, monkeypatch, tmp_path, on_colab: bool):
    """Execute the notebook's first cell as a kernel would; return the commands it ran and its changes to cwd/sys.path."""
    calls = []
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(os, 'chdir', lambda path: calls.append(['chdir', str(path)]))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    if on_colab:
        monkeypatch.setitem(sys.modules, 'google.colab', types.ModuleType('google.colab'))
    else:
        monkeypatch.delitem(sys.modules, 'google.colab', raising=False)
    path_before = list(sys.path)
    exec(compile(_source(_cells(nb)[0]), str(nb), 'exec'), {})
    return calls, [p for p in sys.path if p not in path_before]


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_on_colab_and_does_nothing_elsewhere(nb, monkeypatch, tmp_path):
    first = _cells(nb)[0]
    assert first['cell_type'] == 'code' and "'google.colab' in sys.modules" in _source(first)
    assert 'parameters' not in first.get('metadata', {}).get('tags', [])  # papermill still finds its own cell
    calls, added = _run_colab_cell(nb, monkeypatch, tmp_path, on_colab=False)
    assert (calls, added) == ([], []), 'the Colab cell did something outside Colab'
    calls, added = _run_colab_cell(nb, monkeypatch, tmp_path, on_colab=True)
    assert ['git', 'clone', '--depth', '1', REPO_URL, '/content/faceseg'] in calls
    assert [sys.executable, '-m', 'pip', 'install', '-q', '-e', '/content/faceseg'] in calls
    assert added == ['/content/faceseg'] and ['chdir', '/content/faceseg'] in calls


def test_readme_has_an_open_in_colab_badge_per_notebook():
    readme = (REPO / 'README.md').read_text()
    base = REPO_URL.replace('https://github.com/', 'https://colab.research.google.com/github/')
    for nb in NOTEBOOKS:
        assert f'{base}/blob/main/notebooks/{nb.name}' in readme, nb.name


def test_notebook_defaults_are_the_demo_outputs():
    """Run All right after `faceseg demo`: the notebooks that look at data or a model default to what the demo made."""
    prepared = demo_data_paths(None, DEMO_RECIPE['size'])[1].relative_to(REPO).as_posix()
    raw = demo_data_paths(None, DEMO_RECIPE['size'])[0].relative_to(REPO).as_posix()
    checkpoint = f'{DEMO_OUT}/runs/demo/best.pt'
    by_name = {nb.stem: _parameters(nb) for nb in NOTEBOOKS}
    assert by_name['01_data_exploration']['data_dir'] == prepared
    assert by_name['04_test_and_visualize']['checkpoint'] == checkpoint
    assert by_name['05_parse_photos']['checkpoint'] == checkpoint
    assert by_name['05_parse_photos']['inputs'] == [f'{raw}/CelebA-HQ-img']
