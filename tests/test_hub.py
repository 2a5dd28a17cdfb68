"""faceseg export --format hub: a trained checkpoint -> hub folder -> smp.from_pretrained, faceseg predict and faceseg
test give the checkpoint's label maps; the model card holds the run's own numbers; broken folders are refused.

The upload (--push) is not tested here: it needs the network and a Hugging Face login."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from faceseg_lib.cli import main
from faceseg_lib.dataset import IMAGENET_MEAN, IMAGENET_STD, read_image, split_ids
from faceseg_lib.errors import DataError
from faceseg_lib.hub import check_hub, export_hub
from faceseg_lib.models import class_scores, create_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from faceseg_lib.predict import normalize_batch
from faceseg_lib.train import fit
from helpers import SIZE


@pytest.fixture(scope='module')
def run(train_set, tmp_path_factory):
    """A tiny trained run (Unet/resnet18, 64 px, 2 epochs of 2 steps), tested with `faceseg test`, exported with --format hub."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        folder = fit(data_dir=str(train_set), out_dir=str(tmp_path_factory.mktemp('hub-runs')), name='tiny', arch='Unet',
                     encoder='resnet18', encoder_weights=None, size=SIZE, epochs=2, max_steps=2, batch_size=4, workers=0)
        assert main(['test', str(folder / 'best.pt'), '--n-examples', '1', '--workers', '0', '-q']) == 0
        assert main(['export', str(folder / 'best.pt'), str(folder / 'hub'), '--format', 'hub', '--images', str(train_set)]) == 0
        return folder
    finally:
        torch.set_num_threads(n)


def test_folder_is_what_smp_reads_and_gives_the_checkpoints_labels(run, train_set):
    hub = run / 'hub'
    assert sorted(p.name for p in hub.iterdir()) == ['README.md', 'config.json', 'faceseg.json', 'model.safetensors']
    assert json.loads((hub / 'config.json').read_text())['encoder_name'] == 'resnet18'
    ids = split_ids(train_set, 'test')
    x = torch.from_numpy(normalize_batch(np.stack([read_image(train_set / 'images' / f'{i}.jpg') for i in ids]), IMAGENET_MEAN, IMAGENET_STD))
    theirs = smp.from_pretrained(str(hub)).eval()
    ours, ckpt = model_from_checkpoint(run / 'best.pt')
    meta = json.loads((hub / 'faceseg.json').read_text())
    assert meta['head'] == ckpt['model']['head'] == 'multiclass' and meta['size'] == SIZE and meta['mean'] == list(IMAGENET_MEAN)
    assert [c['name'] for c in meta['classes']][:2] == ['background', 'skin'] and len(meta['classes'][1]['color']) == 3
    with torch.inference_mode():
        a, b = class_scores(theirs(x), meta['head']).argmax(1), class_scores(ours(x), meta['head']).argmax(1)
    assert torch.equal(a, b) and len(torch.unique(b)) > 1   # identical, and not a constant map
    assert meta['checkpoint']['config'] == ckpt['config'] and meta['checkpoint']['metrics'] == ckpt['metrics']


def test_last_pt_exports_without_its_training_state(run, train_set, tmp_path):
    """last.pt holds the model as validation scored it (the default's logit offset folded in), plus what --resume needs
    (history, the raw head bias as tensors): the folder gets the model and leaves the training state out."""
    assert 'raw' in torch.load(run / 'last.pt', weights_only=True)['extra']
    report = export_hub(run / 'last.pt', tmp_path / 'hub', images=train_set)
    meta = json.loads((tmp_path / 'hub' / 'faceseg.json').read_text())
    assert not {'extra', 'optimizer', 'scheduler', 'scaler'} & set(meta['checkpoint']) and meta['checkpoint']['metrics']['epoch'] == 2
    assert report['identical']  # the folder's label maps are last.pt's, as export checks


def test_predict_on_the_folder_writes_the_checkpoints_label_maps(run, train_set, tmp_path):
    photos = [str(train_set / 'images' / f'{i}.jpg') for i in split_ids(train_set, 'test')[:3]]
    for model, out in ((run / 'best.pt', 'ckpt'), (run / 'hub', 'hub')):
        assert main(['predict', str(model), *photos, '--out', str(tmp_path / out), '--no-detect', '-q']) == 0
    for p in photos:
        a, b = (cv2.imread(str(tmp_path / d / (Path(p).stem + '.png')), cv2.IMREAD_UNCHANGED) for d in ('ckpt', 'hub'))
        assert a is not None and np.array_equal(a, b)


def test_test_on_the_folder_gives_the_checkpoints_scores(run):
    assert main(['test', str(run / 'hub'), '--n-examples', '1', '--workers', '0', '-q']) == 0
    ours, theirs = (json.loads((d / 'metrics.json').read_text()) for d in (run / 'eval-test', run / 'hub-eval-test'))
    assert ours['f1'] == theirs['f1'] and ours['mean_f1'] == theirs['mean_f1']
    assert sorted(p.name for p in (run / 'hub').iterdir()) == ['README.md', 'config.json', 'faceseg.json', 'model.safetensors']


def test_card_holds_the_runs_numbers(run):
    card = (run / 'hub' / 'README.md').read_text()
    val, test = load_checkpoint(run / 'best.pt')['metrics'], json.loads((run / 'eval-test' / 'metrics.json').read_text())
    history = [l.split(',') for l in (run / 'history.csv').read_text().splitlines()]
    seconds = sum(float(r[history[0].index('seconds')]) for r in history[1:])
    assert card.startswith('---\nlibrary_name: segmentation-models-pytorch\nlicense: other')
    assert f"mean F1 {val['mean_f1']:.4f}" in card and f"epoch {val['epoch']}" in card
    assert f"Test (test split, {test['images']} images" in card and f"mean F1 {test['mean_f1']:.4f}" in card
    assert (run / 'eval-test' / 'metrics.md').read_text().strip() in card             # the per-class test table
    assert f"{seconds / 60:.1f} min in all" in card and 'Unet' in card and 'resnet18' in card
    assert 'non-commercial research' in card and 'Intended use' in card and 'train 14' in card   # licence, split sizes


def test_multilabel_head_round_trip(tmp_path):
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / 'ml.pt', create_model('FPN', 'mobilenet_v2', None, head='multilabel'),
                         {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE})
    r = export_hub(ck, tmp_path / 'hub', n_check=2)
    assert r['identical'] and not r['tested'] and load_checkpoint(tmp_path / 'hub')['model']['head'] == 'multilabel'
    assert smp.from_pretrained(str(tmp_path / 'hub')).segmentation_head[0].out_channels == 18
    assert 'Test: not evaluated' in (tmp_path / 'hub' / 'README.md').read_text()


def test_broken_or_changed_folders_are_refused(run, tmp_path):
    bad = tmp_path / 'bad'; shutil.copytree(run / 'hub', bad)
    model, _ = model_from_checkpoint(run / 'best.pt')
    with torch.no_grad(): model.segmentation_head[0].weight.neg_()              # another model than the folder's
    with pytest.raises(DataError, match='label maps differ'): check_hub(bad, model, n=2)
    (bad / 'model.safetensors').write_bytes(b'junk')
    with pytest.raises(DataError, match='cannot be read as safetensors'): load_checkpoint(bad)
    (bad / 'model.safetensors').unlink()
    with pytest.raises(DataError, match='has no model.safetensors'): load_checkpoint(bad)
    with pytest.raises(DataError, match='without faceseg.json'): load_checkpoint(tmp_path)
    with pytest.raises(DataError, match='exists'): export_hub(run / 'best.pt', run / 'hub')   # nothing overwritten unasked
    assert main(['export', str(run / 'best.pt'), str(tmp_path / 'x.onnx'), '--push', 'me/x']) == 2
    assert main(['export', str(run / 'best.pt'), str(tmp_path / 'h'), '--format', 'hub', '--int8']) == 2 and not (tmp_path / 'h').exists()


def test_notebook_05_takes_the_folder(run, train_set, tmp_path):
    from faceseg_lib.pipeline import run_notebook
    photos = [str(train_set / 'images' / f'{i}.jpg') for i in split_ids(train_set, 'test')[:2]]
    run_notebook('05_parse_photos', tmp_path / '05.ipynb', dict(checkpoint=str(run / 'hub'), inputs=photos, out_dir=str(tmp_path / 'out'),
                                                                 detect=False, device='cpu'), progress=False)
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['counts']['ok'] == 2
    for p in photos:   # the checkpoint's labels (test_predict_on_the_folder_... compares the CLI on both)
        a = cv2.imread(str(tmp_path / 'out' / (Path(p).stem + '.png')), cv2.IMREAD_UNCHANGED)
        assert a is not None and a.shape == (SIZE, SIZE)
