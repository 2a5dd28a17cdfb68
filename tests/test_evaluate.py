"""faceseg_lib.evaluate and `faceseg test`: flip TTA with the left/right swap, the metrics files and their Markdown
table, clear errors for bad checkpoints, and the command on a tiny trained run."""
import ast
import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import faceseg_lib.evaluate as E
from faceseg_lib.report import parse_markdown_table
from conftest import REPO
from faceseg_lib.dataset import FaceParsingDataset, eval_transform, split_ids
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, CLASS_INDEX, FLIP_LUT, LR_PAIRS, NUM_CLASSES
from faceseg_lib.models import create_model, load_checkpoint, save_checkpoint
from faceseg_lib.train import fit
from helpers import SIZE, evaluate_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')

# the left/right channel swap spelled out from the class names, independently of FLIP_LUT
SWAP = list(range(NUM_CLASSES))
for _a, _b in LR_PAIRS: SWAP[CLASS_INDEX[_a]], SWAP[CLASS_INDEX[_b]] = CLASS_INDEX[_b], CLASS_INDEX[_a]


class Symmetrised(nn.Module):
    """g(x) + swap(mirror(g(mirror(x)))): exactly mirror-equivariant, with l_*/r_* exchanged under a flip."""
    def __init__(self, g): super().__init__(); self.g = g
    def forward(self, x): return self.g(x) + self.g(x.flip(-1))[:, SWAP].flip(-1)


def random_conv(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.Tanh(), nn.Conv2d(8, NUM_CLASSES, 5, padding=2)).eval()


@pytest.fixture(scope='session')
def run(train_set, tmp_path_factory):
    """A checkpoint of a tiny run: Unet/resnet18 at 64 px, 1 epoch of 2 steps, random initial weights."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        return fit(data_dir=str(train_set), out_dir=str(tmp_path_factory.mktemp('eval-runs')), name='tiny', arch='Unet',
                   encoder='resnet18', encoder_weights=None, size=SIZE, epochs=1, max_steps=2, batch_size=4, workers=0)
    finally:
        torch.set_num_threads(n)


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*'))


# --- flip test-time augmentation ------------------------------------------------------------------------------------

def test_unflip_swaps_channels_by_flip_lut_and_mirrors():
    probs = torch.randn(2, NUM_CLASSES, 4, 6)
    out = E.unflip(probs)
    for k in range(NUM_CLASSES):
        torch.testing.assert_close(out[:, k], probs[:, int(FLIP_LUT[k])].flip(-1), rtol=0, atol=0)
    assert FLIP_LUT.tolist() == SWAP  # FLIP_LUT is the swap the class names spell out


def test_mirror_equivariant_model_gets_identical_results_with_tta(train_set):
    ds = FaceParsingDataset(train_set, 'test', transform=eval_transform(SIZE))
    model = Symmetrised(random_conv(0))
    cm, per_image = E.evaluate_model(model, ds, tta=False, batch_size=2)
    cm_tta, per_image_tta = E.evaluate_model(model, ds, tta=True, batch_size=2)
    m = cm.matrix
    assert m[:, CLASS_INDEX['l_eye']].sum() > 0 and m[:, CLASS_INDEX['r_eye']].sum() > 0  # l/r are predicted at all
    np.testing.assert_array_equal(cm_tta.matrix, m)
    pd.testing.assert_frame_equal(per_image_tta, per_image)
    assert per_image['id'].tolist() == split_ids(train_set, 'test')  # dataset order, nothing shuffled or dropped


def test_tta_changes_a_model_that_is_not_mirror_equivariant(train_set):
    ds = FaceParsingDataset(train_set, 'test', transform=eval_transform(SIZE))
    model = random_conv(0)
    assert not np.array_equal(E.evaluate_model(model, ds, tta=True)[0].matrix, E.evaluate_model(model, ds)[0].matrix)


def test_tta_without_the_left_right_swap_would_break_an_equivariant_model(train_set, monkeypatch):
    ds = FaceParsingDataset(train_set, 'test', transform=eval_transform(SIZE))
    model = Symmetrised(random_conv(0))
    plain = E.evaluate_model(model, ds)[0].matrix
    monkeypatch.setattr(E, 'FLIP_LUT', np.arange(NUM_CLASSES))  # flip back without exchanging l_* and r_*
    assert not np.array_equal(E.evaluate_model(model, ds, tta=True)[0].matrix, plain)


# --- evaluate(): files, numbers, never the dataset ------------------------------------------------------------------

def test_evaluate_writes_metrics_that_match_an_independent_count(run, train_set):
    before = tree(train_set)
    res = E.evaluate(run / 'best.pt', split='test', workers=0, progress=False)
    out = run / 'eval-test'
    assert res['out_dir'] == str(out)
    assert {p.name for p in out.iterdir()} == {'metrics.json', 'per_image.csv', 'metrics.md', 'confusion.csv'}
    assert tree(train_set) == before  # nothing written into the dataset
    truth, _ = evaluate_checkpoint(run / 'best.pt', train_set, 'test')  # numpy, one image at a time
    loaded = E.load_evaluation(out)
    np.testing.assert_array_equal(loaded['confusion'], truth)
    tp = np.diag(truth).astype(float); den = truth.sum(0) + truth.sum(1)
    f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    saved = json.loads((out / 'metrics.json').read_text())
    assert saved['mean_f1'] == pytest.approx(np.nanmean(f1[1:]))
    assert saved['micro_fscore'] == pytest.approx(tp.sum() / truth.sum())
    assert [saved['f1'][c] is None for c in CLASSES] == list(np.isnan(f1))  # absent classes: null, not 0 or 1
    assert (saved['split'], saved['images'], saved['tta'], saved['arch']) == ('test', 5, False, 'Unet')
    per_image = pd.read_csv(out / 'per_image.csv')
    assert per_image['id'].tolist() == split_ids(train_set, 'test')
    assert {'mean_f1', 'pixel_acc', 'f1_l_eye', 'f1_cloth'} <= set(per_image.columns)


def test_markdown_table_parses_back_to_metrics_json(run):
    res = E.evaluate(run / 'best.pt', split='val', tta=True, workers=0, progress=False)
    assert res['out_dir'] == str(run / 'eval-val-tta')
    saved = json.loads((run / 'eval-val-tta' / 'metrics.json').read_text())
    text = (run / 'eval-val-tta' / 'metrics.md').read_text()
    header = next(line for line in text.splitlines() if line.startswith('| metric'))
    assert header.split('|')[2:-2] == [f' {c} ' for c in CLASSES]  # one column per class, then 'mean'
    back = parse_markdown_table(text)
    for metric in ('f1', 'iou'):
        for c in CLASSES:
            if saved[metric][c] is None: assert back[metric][c] is None, (metric, c)
            else: assert back[metric][c] == pytest.approx(saved[metric][c], abs=5e-5), (metric, c)
    for key in ('mean_f1', 'mean_iou', 'micro_fscore'):
        assert back[key] == pytest.approx(saved[key], abs=5e-5)


def test_evaluate_is_deterministic(run, tmp_path):
    a = E.evaluate(run / 'best.pt', out_dir=tmp_path / 'a', workers=0, progress=False)
    b = E.evaluate(run / 'best.pt', out_dir=tmp_path / 'b', workers=0, progress=False)
    drop = lambda r: {k: v for k, v in r.items() if k not in ('seconds', 'out_dir', 'files')}
    assert drop(a) == drop(b)
    assert (tmp_path / 'a' / 'per_image.csv').read_text() == (tmp_path / 'b' / 'per_image.csv').read_text()


def test_evaluate_refuses_to_write_into_the_dataset(run, train_set):
    with pytest.raises(DataError, match='never writes into a dataset'):
        E.evaluate(run / 'best.pt', out_dir=train_set / 'eval', workers=0, progress=False)
    assert not (train_set / 'eval').exists()


# --- bad checkpoints: clear errors naming the file ------------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match='no such checkpoint file') as e:
        E.evaluate(tmp_path / 'nope.pt', progress=False)
    assert str(tmp_path / 'nope.pt') in str(e.value) and 'Fix' in str(e.value)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / 'notes.pt'; bad.write_text('hello')
    with pytest.raises(DataError, match='cannot be read') as e:
        E.evaluate(bad, progress=False)
    assert str(bad) in str(e.value)


def test_checkpoint_for_another_class_count(tmp_path, train_set):
    path = save_checkpoint(tmp_path / 'five.pt', create_model('Unet', 'resnet18', None, num_classes=5),
                           {'arch': 'Unet', 'encoder': 'resnet18', 'size': SIZE, 'data_dir': str(train_set)})
    with pytest.raises(DataError, match='has 5 output channels') as e:
        E.evaluate(path, progress=False)
    assert str(path) in str(e.value)


def test_checkpoint_with_another_class_list(run, tmp_path):
    ckpt = torch.load(run / 'best.pt', weights_only=True)
    ckpt['classes'] = list(CLASSES[:11])
    torch.save(ckpt, tmp_path / 'eleven.pt')
    with pytest.raises(DataError, match='trained for 11 classes') as e:
        E.evaluate(tmp_path / 'eleven.pt', progress=False)
    assert str(tmp_path / 'eleven.pt') in str(e.value)


def test_checkpoint_whose_weights_are_another_architecture(run, tmp_path):
    ckpt = torch.load(run / 'best.pt', weights_only=True)
    ckpt['model']['arch'] = 'FPN'  # the file names FPN but holds Unet weights
    torch.save(ckpt, tmp_path / 'fpn.pt')
    with pytest.raises(DataError, match='do not fit the FPN/resnet18 model') as e:
        E.evaluate(tmp_path / 'fpn.pt', progress=False)
    assert str(tmp_path / 'fpn.pt') in str(e.value)


def test_checkpoint_whose_dataset_is_gone(run, tmp_path):
    ckpt = load_checkpoint(run / 'best.pt')
    ckpt['config']['data_dir'] = str(tmp_path / 'moved')
    ckpt.pop('path'); torch.save(ckpt, tmp_path / 'moved.pt')
    with pytest.raises(DataError, match='--data') as e:
        E.evaluate(tmp_path / 'moved.pt', progress=False)
    assert str(tmp_path / 'moved') in str(e.value)


# --- figures and the command ----------------------------------------------------------------------------------------

def test_evaluation_figures_are_saved(run, tmp_path):
    res = E.evaluate(run / 'best.pt', out_dir=tmp_path / 'ev', workers=0, progress=False)
    figs = E.evaluation_figures(res, n_examples=2, save_dir=tmp_path / 'vis', device='cpu')
    assert sorted(figs) == ['best', 'confusion', 'overlays', 'per_class_f1', 'worst']
    assert sorted(p.name for p in (tmp_path / 'vis').iterdir()) == sorted(f'{k}.png' for k in figs)
    per_image = pd.read_csv(tmp_path / 'ev' / 'per_image.csv').set_index('id')['mean_f1']
    worst = per_image.sort_values(kind='stable').index[:2].tolist()
    titles = [ax.get_title(loc='left') for ax in figs['worst'].axes[0:8:4]]  # the image column of each row
    assert titles == [f'id {i} · F1 {per_image[i]:.3f}' for i in worst]
    assert per_image[worst[0]] <= per_image[worst[1]] <= per_image.drop(worst).min()


def test_faceseg_test_command(run, tmp_path, capsys):
    from faceseg_lib.cli import main
    out, vis = tmp_path / 'out', tmp_path / 'vis'
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        rc = main(['test', str(run / 'best.pt'), '--split', 'test', '--device', 'cpu', '--out', str(out), '--vis-dir', str(vis),
                   '--n-examples', '1', '--workers', '0', '--batch-size', '2', '-q'])
    finally:
        torch.set_num_threads(n)
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert '| metric | background | skin |' in printed.out and 'micro fscore' in printed.out  # the table is printed
    assert json.loads((out / 'metrics.json').read_text())['images'] == 5
    assert {p.name for p in vis.iterdir()} == {'per_class_f1.png', 'confusion.png', 'worst.png', 'best.png', 'overlays.png'}
    assert all(p.stat().st_size > 5000 for p in vis.iterdir())


def test_faceseg_test_flags_dead_parts(run, tmp_path, capsys):
    from faceseg_lib.cli import main
    ckpt = torch.load(run / 'best.pt', weights_only=True)
    ckpt['state_dict']['segmentation_head.0.bias'][CLASS_INDEX['nose']] = -1e4  # the nose can never win the argmax
    torch.save(ckpt, tmp_path / 'no-nose.pt')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        rc = main(['test', str(tmp_path / 'no-nose.pt'), '--device', 'cpu', '--out', str(tmp_path / 'out'),
                   '--n-examples', '1', '--workers', '0', '-q'])
    finally:
        torch.set_num_threads(n)
    printed = capsys.readouterr()
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    expected = [c for c in CLASSES[1:] if metrics['support'][c] > 0 and metrics['f1'][c] == 0]
    assert rc == 0 and 'nose' in expected and metrics['dead_parts'] == expected
    warning = next(l for l in printed.err.splitlines() if l.startswith('WARNING: dead parts'))
    assert "present in the 'test' split, F1 0" in warning and all(c in warning for c in expected)


def test_notebook_parameters_are_evaluate_arguments():
    nb = json.loads((REPO / 'notebooks' / '04_test_and_visualize.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))
    names = [node.targets[0].id for node in ast.parse(''.join(cell['source'])).body]
    accepted = set(inspect.signature(E.evaluate).parameters) | {'n_examples'}
    assert names[0] == 'checkpoint' and set(names) <= accepted, set(names) - accepted
