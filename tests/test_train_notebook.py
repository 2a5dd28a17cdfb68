"""notebooks/02_train.ipynb: its parameters are the TrainConfig fields, and a tiny papermill run leaves a complete run folder."""
import ast
import dataclasses
import json

import pytest

from conftest import REPO
from faceseg_lib.config import TrainConfig, config_fields, field_help
from faceseg_lib.history import load_history
from helpers import SIZE

pytestmark = pytest.mark.usefixtures('one_thread')

NOTEBOOK = REPO / 'notebooks' / '02_train.ipynb'


def parameters_cell() -> str:
    cells = [c for c in json.loads(NOTEBOOK.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1
    return ''.join(cells[0]['source'])


def test_parameters_are_the_config_fields_with_their_defaults():
    tree = ast.parse(parameters_cell())
    assigned = [(node.targets[0].id, ast.literal_eval(node.value)) for node in tree.body]
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 for node in tree.body)
    assert [name for name, _ in assigned] == config_fields()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert dict(assigned) == defaults


def test_parameters_cell_comments_are_the_config_comments():
    """Each parameter carries the comment of its TrainConfig field, word for word (it is the CLI's --help too)."""
    helps = field_help(TrainConfig)
    assert list(helps) == config_fields()
    for line in parameters_cell().splitlines():
        name, comment = line.split('=')[0].strip(), line.split('#', 1)[1].strip()
        assert comment == helps[name], name


@pytest.mark.slow
def test_papermill_run_writes_run_folder_with_figures(train_set, tmp_path, monkeypatch):
    from faceseg_lib.pipeline import run_notebook
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the kernel's torch: one thread (see conftest.one_thread)
    params = dict(data_dir=str(train_set), out_dir=str(tmp_path / 'runs'), name='nb', arch='FPN', encoder='resnet18',
                  encoder_weights=None, size=SIZE, epochs=1, batch_size=4, max_steps=2, workers=0)
    out = run_notebook('02_train', tmp_path / '02_train.ipynb', params, progress=False)
    run = tmp_path / 'runs' / 'nb'
    names = {p.name for p in run.iterdir()}
    assert {'config.json', 'history.csv', 'best.pt', 'last.pt', 'curves.png', 'per_class_f1.png', 'per_class_val.csv'} <= names
    assert all((run / n).stat().st_size > 1000 for n in ('curves.png', 'per_class_f1.png'))
    assert len(load_history(run)) == 1
    config = json.loads((run / 'config.json').read_text())
    assert (config['arch'], config['encoder'], config['encoder_weights']) == ('FPN', 'resnet18', None)
    assert 'epoch 1/1 ' in out.read_text()  # the executed notebook shows the per-epoch log line
