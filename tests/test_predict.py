"""faceseg predict: label maps of the photo's size, face detection and paste-back, odd inputs, and bad input that loses nothing."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import faceseg_lib.predict as P
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, NUM_CLASSES
from faceseg_lib.models import create_model, save_checkpoint

SIZE = 64


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-weight FPN/mobilenet_v2 checkpoint for 64 px inputs (the fields predict needs)."""
    torch.set_num_threads(1); torch.manual_seed(0)
    model = create_model('FPN', 'mobilenet_v2', None)
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny.pt', model, {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE})


@pytest.fixture(scope='module')
def faces(sample_dir) -> list[Path]:
    """Three real 512 px aligned CelebA-HQ crops."""
    return sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[:3]


class SkinEverywhere:
    """A stand-in parser that calls every pixel of every crop 'skin': shows exactly where crops are pasted."""
    backend, name, size, classes = 'fake', 'skin', SIZE, list(CLASSES)
    def __call__(self, batch):
        p = np.zeros((len(batch), NUM_CLASSES, SIZE, SIZE), np.float32); p[:, 1] = 1
        return p


def read_label(path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert lab is not None and lab.dtype == np.uint8 and lab.ndim == 2, path
    return lab


def run(ckpt, inputs, out, **kw):
    return P.predict(ckpt, inputs, out, progress=False, log=lambda m: None, **kw)


def test_no_detect_on_real_sample(tiny_ckpt, faces, tmp_path):
    s = run(tiny_ckpt, faces, tmp_path / 'out', detect=False, json=True, batch_size=2)
    assert s['counts'] == {'ok': 3, 'no_face': 0, 'error': 0} and s['faces'] == 0
    for f in faces:
        lab = read_label(tmp_path / 'out' / f'{f.stem}.png')
        assert lab.shape == (512, 512) and lab.max() < NUM_CLASSES
        assert cv2.imread(str(tmp_path / 'out' / f'{f.stem}_color.png')).shape == (512, 512, 3)
        assert cv2.imread(str(tmp_path / 'out' / f'{f.stem}_overlay.jpg')).shape == (512, 512, 3)
        shares = json.loads((tmp_path / 'out' / f'{f.stem}.json').read_text())['area_share']
        assert list(shares) == list(CLASSES) and abs(sum(shares.values()) - 1) < 1e-4
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['counts']['ok'] == 3


def test_detection_pastes_labels_where_the_face_is(faces, tmp_path, monkeypatch):
    monkeypatch.setattr(P, 'load_parser', lambda *a, **k: SkinEverywhere())
    img = P.read_photo(faces[0])
    canvas = np.full((700, 900, 3), 255, np.uint8); canvas[150:662, 300:812] = img  # the face off-centre on a white page
    Image.fromarray(canvas).save(tmp_path / 'page.png')
    s = run('unused.pt', tmp_path / 'page.png', tmp_path / 'out', json=True, detector='dlib', context=False)  # box crop alone
    assert s['counts']['ok'] == 1 and s['faces'] == 1
    box = json.loads((tmp_path / 'out' / 'page.json').read_text())['boxes'][0]
    x0, y0, x1, y1 = box['box']
    assert 300 < x0 < x1 < 812 and 150 < y0 < y1 < 662                  # the detected box lies on the pasted face
    lab = read_label(tmp_path / 'out' / 'page.png')
    assert lab.shape == (700, 900)
    ys, xs = np.nonzero(lab)
    rx, ry, rw, rh = box['region']
    assert (xs.min(), ys.min()) == (max(rx, 0), max(ry, 0))             # labels exactly on the crop region...
    assert (xs.max() + 1, ys.max() + 1) == (min(rx + rw, 900), min(ry + rh, 700))
    assert lab[int(y0):int(y1), int(x0):int(x1)].all()                   # ...which covers the whole face box
    assert lab[:, :max(rx, 0)].max(initial=0) == 0                       # background where there is no face
    assert rw > 1.5 * (x1 - x0) and ry + rh / 2 < (y0 + y1) / 2          # a CelebA-HQ-like margin, shifted up
    s = run('unused.pt', tmp_path / 'page.png', tmp_path / 'ctx', detector='dlib')  # with the context pass (the default)...
    assert read_label(tmp_path / 'ctx' / 'page.png').min() == 1           # ...labels reach beyond the crop: no cut at its edge


def test_two_faces_in_one_photo(tiny_ckpt, faces, tmp_path):
    a, b = P.read_photo(faces[0]), P.read_photo(faces[1])
    Image.fromarray(np.concatenate([a, b], axis=1)).save(tmp_path / 'pair.jpg')
    s = run(tiny_ckpt, tmp_path / 'pair.jpg', tmp_path / 'out', json=True)
    assert s['faces'] == 2
    boxes = sorted(b['box'] for b in json.loads((tmp_path / 'out' / 'pair.json').read_text())['boxes'])
    assert boxes[0][2] < 512 < boxes[1][0]                               # one face in each half
    lab = read_label(tmp_path / 'out' / 'pair.png')
    assert lab.shape == (512, 1024) and lab.max() < NUM_CLASSES


def test_photo_without_a_face_is_reported_and_skipped(tiny_ckpt, faces, tmp_path):
    Image.fromarray(np.full((200, 300, 3), (40, 120, 200), np.uint8)).save(tmp_path / 'flat.png')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(tmp_path / 'noise.png')
    messages = []
    s = P.predict(tiny_ckpt, [tmp_path / 'flat.png', tmp_path / 'noise.png', faces[0]], tmp_path / 'out', progress=False, log=messages.append)
    assert s['counts'] == {'ok': 1, 'no_face': 2, 'error': 0}
    assert [i['status'] for i in s['items']] == ['no_face', 'no_face', 'ok']
    assert any('no face found' in m and 'flat.png' in m for m in messages)
    assert not list((tmp_path / 'out').glob('flat*')) and not list((tmp_path / 'out').glob('noise*'))
    assert (tmp_path / 'out' / f'{faces[0].stem}.png').is_file()
    s = run(tiny_ckpt, tmp_path / 'flat.png', tmp_path / 'out2', no_face='whole')  # or parse it whole when asked
    assert s['counts']['ok'] == 1 and read_label(tmp_path / 'out2' / 'flat.png').shape == (200, 300)


def test_grayscale_rgba_16bit_exif_and_large_inputs(tiny_ckpt, faces, tmp_path):
    img = P.read_photo(faces[0])
    d = tmp_path / 'in'; d.mkdir()
    Image.fromarray(img).convert('L').save(d / 'gray.png')
    Image.fromarray(np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])).save(d / 'rgba.png')
    Image.fromarray((img[..., 0].astype(np.uint16) * 257)).save(d / 'deep.png')                 # 16-bit grayscale
    im = Image.fromarray(np.rot90(img[:, :400]).copy())  # stored on its side, EXIF says 'rotate 90 clockwise to view'
    exif = im.getexif(); exif[0x0112] = 6; im.save(d / 'turned.jpg', exif=exif)
    big = np.full((2000, 3000, 3), 200, np.uint8); big[100:1900, 600:2400] = cv2.resize(img, (1800, 1800))
    Image.fromarray(big).save(d / 'large.jpg', quality=85)
    s = run(tiny_ckpt, d, tmp_path / 'out', context=False)  # no whole-photo pass: only the face crops get labels
    assert s['counts'] == {'ok': 5, 'no_face': 0, 'error': 0}, s['items']
    shapes = {n: read_label(tmp_path / 'out' / f'{n}.png').shape for n in ('gray', 'rgba', 'deep', 'turned', 'large')}
    assert shapes == {'gray': (512, 512), 'rgba': (512, 512), 'deep': (512, 512), 'turned': (512, 400), 'large': (2000, 3000)}
    big_lab = read_label(tmp_path / 'out' / 'large.png')
    assert big_lab.max() < NUM_CLASSES and big_lab[:, :300].max() == 0   # the face found at full size; page edge stays background


def test_corrupt_file_is_reported_and_the_rest_complete(tiny_ckpt, faces, tmp_path):
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
    (tmp_path / 'notes.txt').write_text('hello')
    messages = []
    s = P.predict(tiny_ckpt, [faces[0], tmp_path / 'broken.jpg', tmp_path / 'notes.txt', tmp_path / 'gone.jpg', faces[1]],
                  tmp_path / 'out', detect=False, progress=False, log=messages.append)
    assert s['counts'] == {'ok': 2, 'no_face': 0, 'error': 3}
    errors = [i['problem'] for i in s['items'] if i['status'] == 'error']
    assert any('broken.jpg' in e and 'is not a whole JPEG' in e for e in errors)  # JPEG magic, no JPEG
    assert any('notes.txt' in e for e in errors) and any('gone.jpg' in e and 'no such file' in e for e in errors)
    assert any('broken.jpg' in m for m in messages)
    assert all((tmp_path / 'out' / f'{f.stem}.png').is_file() for f in faces[:2])


def test_existing_results_are_not_overwritten(tiny_ckpt, faces, tmp_path):
    out = tmp_path / 'out'
    run(tiny_ckpt, faces[:1], out, detect=False)
    label = out / f'{faces[0].stem}.png'
    before = label.read_bytes(); label.write_bytes(b'mine')                # a result the user edited
    with pytest.raises(DataError, match='earlier run.*overwrite=True'):
        run(tiny_ckpt, faces[:2], out, detect=False)
    assert label.read_bytes() == b'mine' and not (out / f'{faces[1].stem}.png').exists()
    with pytest.raises(DataError, match='bset.pt'):                       # a failing --overwrite (a typo) keeps them
        run(tiny_ckpt.parent / 'bset.pt', faces[1:2], out, detect=False, overwrite=True)
    assert label.read_bytes() == b'mine' and sorted(p.name for p in tmp_path.iterdir()) == ['out']
    s = run(tiny_ckpt, faces[1:2], out, detect=False, overwrite=True)
    assert s['counts']['ok'] == 1 and not label.exists()                  # the earlier run's files are replaced
    assert (out / f'{faces[1].stem}.png').is_file() and before
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'notes.txt').write_text('x')
    with pytest.raises(DataError, match='not the results of a predict run'):  # never replaces a folder it did not write
        run(tiny_ckpt, faces[:1], tmp_path / 'mine', detect=False, overwrite=True)
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'x'


def test_same_stem_from_two_folders(tiny_ckpt, faces, tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir(); (tmp_path / sub / 'me.jpg').write_bytes(faces[0 if sub == 'a' else 1].read_bytes())
    s = run(tiny_ckpt, [tmp_path / 'a', tmp_path / 'b'], tmp_path / 'out', detect=False)
    assert [i['name'] for i in s['items']] == ['me', 'me-2']
    assert (tmp_path / 'out' / 'me.png').is_file() and (tmp_path / 'out' / 'me-2_overlay.jpg').is_file()


def test_checkpoint_with_another_class_layout_is_refused(tiny_ckpt, tmp_path):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt['classes'] = list(reversed(ckpt['classes']))
    torch.save(ckpt, tmp_path / 'other.pt')
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'x.png')
    with pytest.raises(DataError, match='other.pt: its class layout differs'):
        run(tmp_path / 'other.pt', tmp_path / 'x.png', tmp_path / 'out', detect=False)
    assert not (tmp_path / 'out').exists()                                # refused before anything was written


def test_cli_arguments_run_predict(tiny_ckpt, faces, tmp_path, capsys):
    from faceseg_lib.cli import parse_args
    args = parse_args(['predict', str(tiny_ckpt), str(faces[0]), '--out', str(tmp_path / 'out'), '--no-detect', '--json', '-q'])
    s = args.func(args)
    assert s['counts']['ok'] == 1 and (tmp_path / 'out' / f'{faces[0].stem}.json').is_file()
    assert 'parsed 1 photo(s)' in capsys.readouterr().out
