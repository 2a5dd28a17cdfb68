"""The error browser of notebook 04: the worst images per class, and under papermill the static figure instead of widgets."""
import json

import pandas as pd
import pytest
import torch

from faceseg_lib.browse import ErrorBrowser, classes_by_failure, live_frontend, worst_for_class
from faceseg_lib.models import create_model, save_checkpoint
from faceseg_lib.pipeline import run_notebook
from helpers import SIZE


@pytest.fixture(scope='module')
def evaluated(train_set, tmp_path_factory):
    """Notebook 04 run headless (papermill) on a random-weight checkpoint of the tiny training set; the executed notebook."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp('browse')
    ckpt = save_checkpoint(d / 'run' / 'best.pt', create_model('FPN', 'mobilenet_v2', None),
                           {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE, 'data_dir': str(train_set)})
    run_notebook('04_test_and_visualize', d / '04.ipynb', dict(checkpoint=ckpt, n_examples=1, device='cpu'), progress=False)
    return d, json.loads((d / '04.ipynb').read_text())


def test_notebook_shows_the_static_figure_under_papermill(evaluated):
    _, nb = evaluated
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and 'ErrorBrowser(' in ''.join(c['source']))
    kinds = {k for o in cell['outputs'] for k in o.get('data', {})}
    assert 'image/png' in kinds and 'application/vnd.jupyter.widget-view+json' not in kinds, kinds
    assert not [o for o in cell['outputs'] if o['output_type'] == 'error']


def test_browser_steps_through_the_worst_images_of_a_class(evaluated):
    d, _ = evaluated
    b = ErrorBrowser(d / 'run' / 'eval-test', device='cpu')
    per_image = pd.read_csv(d / 'run' / 'eval-test' / 'per_image.csv')
    means = {c: per_image[f'f1_{c}'].mean() for c in b.classes}
    assert b.classes == classes_by_failure(per_image) and list(means.values()) == sorted(means.values())
    for cls in b.classes[:3]:
        f1 = per_image.set_index('id').loc[b.ids(cls), f'f1_{cls}'].tolist()
        assert f1 == sorted(f1) and len(f1) == per_image[f'f1_{cls}'].notna().sum()
    v = b.widget(); menu, back, slider, step = v.children[0].children
    step.click(); step.click(); back.click()
    assert slider.value == b.k == min(1, slider.max)
    menu.value = b.classes[1]
    assert (b.cls, b.k, slider.max) == (b.classes[1], 0, len(worst_for_class(per_image, b.classes[1], b.n)) - 1)
    title = b.figure().axes[0].get_title(loc='left')
    assert f'id {b.ids()[0]}' in title and '1/' in title
    assert not live_frontend()          # pytest is not a live notebook
