"""Repository hygiene that CI enforces: clean notebooks, library in sync with its notebooks, papermill parameters."""
import json
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO

NOTEBOOKS = sorted(p for p in (REPO / 'notebooks').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
PIPELINE = sorted(p for p in (REPO / 'notebooks').glob('[0-9][0-9]_*.ipynb'))


def _cells(path):
    return json.loads(path.read_text())['cells']


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(nb):
    dirty = [i for i, c in enumerate(_cells(nb)) if c['cell_type'] == 'code' and (c.get('outputs') or c.get('execution_count'))]
    assert not dirty, f'{nb}: cells {dirty} carry outputs; run nbdev-clean before committing'


@pytest.mark.parametrize('nb', PIPELINE, ids=lambda p: p.name)
def test_pipeline_notebook_has_parameters_cell(nb):
    tagged = [c for c in _cells(nb) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f"{nb}: needs exactly one cell tagged 'parameters' for papermill"


def test_the_four_pipeline_notebooks_exist_in_order():
    names = [p.name for p in PIPELINE]
    assert names[:1] == ['01_data_exploration.ipynb'], names


def test_nbdev_keeps_papermill_tags():
    cfg = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['nbdev']
    assert 'tags' in cfg['allowed_cell_metadata_keys']
    assert (cfg['nbs_path'], cfg['lib_path']) == ('notebooks', 'faceseg_lib')


def test_export_changes_nothing(tmp_path):
    """Exporting the library notebooks into a copy of the repo reproduces faceseg_lib/ byte for byte."""
    if shutil.which('nbdev-export') is None:
        pytest.skip('nbdev not installed')
    copy = tmp_path / 'repo'
    copy.mkdir()
    for item in ('pyproject.toml', 'README.md', 'notebooks', 'faceseg_lib'):
        src = REPO / item
        if src.is_dir(): shutil.copytree(src, copy / item, ignore=shutil.ignore_patterns('__pycache__'))
        elif src.exists(): shutil.copy2(src, copy / item)
    subprocess.run(['nbdev-export'], cwd=copy, check=True, capture_output=True)
    changed = [p.name for p in (REPO / 'faceseg_lib').glob('*.py') if p.read_bytes() != (copy / 'faceseg_lib' / p.name).read_bytes()]
    new = sorted({p.name for p in (copy / 'faceseg_lib').glob('*.py')} - {p.name for p in (REPO / 'faceseg_lib').glob('*.py')})
    assert not changed and not new, f'nbdev-export changed {changed} and added {new}: export and commit the library'


def test_library_notebooks_pass_their_own_checks():
    """The asserts written beside each function in notebooks/lib run green (nbdev-test)."""
    if shutil.which('nbdev-test') is None:
        pytest.skip('nbdev not installed')
    r = subprocess.run(['nbdev-test', 'notebooks/lib'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
