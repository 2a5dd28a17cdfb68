"""The synthetic faces: official raw layout, determinism, part statistics, left/right, overlaps, resuming, refusing."""
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASS_INDEX, LR_PAIRS, PARTS
from faceseg_lib.face_params import face_params
from faceseg_lib.faces import label_map, render_face
from faceseg_lib.synthetic import INDEX, MARKER, synthesize

SMALL = dict(image_size=128, mask_size=64, progress=False)
RARE = ('eye_g', 'hat', 'ear_r', 'neck_l', 'mouth')


def rng(seed, id):
    """The generator synthesize draws face `id` from."""
    return np.random.default_rng(np.random.SeedSequence([seed, id]))


def files(root):
    """Relative path -> bytes of every non-hidden file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob('*')
            if p.is_file() and not p.name.startswith('.')}


def read_masks(root, id):
    """{part: bool mask} read back from the written files of face `id`."""
    folder = Path(root) / 'CelebAMask-HQ-mask-anno' / str(id // 2000)
    return {p: cv2.imread(str(folder / f"{id:05d}_{p}.png"), cv2.IMREAD_UNCHANGED) > 127
            for p in PARTS if (folder / f"{id:05d}_{p}.png").exists()}


@pytest.fixture(scope='module')
def faces():
    """60 small faces drawn as synthesize draws them (seed 0, ids 0..59)."""
    return [render_face(rng(0, i), 64, 64)[1] for i in range(60)]


def test_official_layout_at_official_sizes(tmp_path):
    synthesize(tmp_path, n=1, start_id=7, workers=1, progress=False)
    img = Image.open(tmp_path / 'CelebA-HQ-img' / '7.jpg')
    assert (img.format, img.mode, img.size) == ('JPEG', 'RGB', (1024, 1024))
    names = sorted(p.name for p in (tmp_path / 'CelebAMask-HQ-mask-anno' / '0').iterdir())
    assert names and all(re.fullmatch(r'00007_(.+)\.png', n) and n[6:-4] in PARTS for n in names), names
    for n in names:
        m = Image.open(tmp_path / 'CelebAMask-HQ-mask-anno' / '0' / n)
        assert (m.format, m.mode, m.size) == ('PNG', 'L', (512, 512)), n
        assert set(np.unique(np.asarray(m))) == {0, 255}, n
    assert 'synthetic' in (tmp_path / MARKER).read_text().lower()


def test_anno_folder_is_id_div_2000_and_names_are_official(tmp_path):
    synthesize(tmp_path, n=2, start_id=1999, workers=1, **SMALL)
    synthesize(tmp_path, n=1, start_id=30001, workers=1, **SMALL)     # the same folder, same settings: extended
    written = files(tmp_path)
    assert {k for k in written if k.startswith('CelebA-HQ-img/')} == {
        'CelebA-HQ-img/1999.jpg', 'CelebA-HQ-img/2000.jpg', 'CelebA-HQ-img/30001.jpg'}
    masks = [k for k in written if k.startswith('CelebAMask-HQ-mask-anno/')]
    for k in masks:
        folder, name = k.split('/')[1:]
        assert int(folder) == int(name[:5]) // 2000 and len(name.split('_')[0]) == 5, k
    assert {k.split('/')[1] for k in masks} == {'0', '1', '15'}
    assert 'CelebAMask-HQ-mask-anno/0/01999_skin.png' in written and 'CelebAMask-HQ-mask-anno/15/30001_skin.png' in written


def test_same_seed_same_files_any_worker_count_other_seed_differs(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    render_face(rng(3, 0), 512, 512)       # OpenCV's threads now run in this process: workers must still not hang
    synthesize(a, n=4, seed=3, workers=1, **SMALL)
    synthesize(b, n=4, seed=3, workers=2, **SMALL)
    synthesize(c, n=4, seed=4, workers=1, **SMALL)
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if k.endswith('.png'): assert fa[k] == fb[k], k                # masks: identical bytes
        elif k.endswith('.jpg'):
            ia, ib = (cv2.imdecode(np.frombuffer(f[k], np.uint8), cv2.IMREAD_COLOR).astype(int) for f in (fa, fb))
            assert np.abs(ia - ib).mean() < 0.5, k                     # images: (near-)identical pixels
    other = [label_map(read_masks(c, i)) for i in range(4)]
    assert all((label_map(read_masks(a, i)) != other[i]).mean() > 0.05 for i in range(4))


def test_files_are_exactly_the_present_parts_and_combine_to_the_label_map(tmp_path):
    synthesize(tmp_path, n=5, seed=1, workers=1, **SMALL)
    for id in range(5):
        drawn = render_face(rng(1, id), 128, 64)[1]
        read = read_masks(tmp_path, id)
        assert read.keys() == drawn.keys(), id                         # absent parts have no file
        assert all(m.any() for m in read.values()), id                 # present parts are not empty
        np.testing.assert_array_equal(label_map(read), label_map(drawn))


def test_all_parts_occur_and_rare_parts_are_rare(faces):
    share = {p: np.mean([p in f for f in faces]) for p in PARTS}
    assert all(share[p] > 0 for p in PARTS), share
    assert all(share[p] < 0.35 for p in RARE), share
    assert all(share[p] > 0.9 for p in ('skin', 'nose', 'u_lip', 'l_lip', 'neck')), share


def test_left_is_the_image_right_and_upper_lip_is_above(faces):
    cx = lambda m: np.nonzero(m)[1].mean()
    cy = lambda m: np.nonzero(m)[0].mean()
    for pair in LR_PAIRS:
        both = [f for f in faces if pair[0] in f and pair[1] in f]
        assert len(both) >= 20, pair                                  # the check below is not vacuous
        assert all(cx(f[pair[0]]) > cx(f[pair[1]]) for f in both), pair
    assert all(cy(f['u_lip']) < cy(f['l_lip']) for f in faces)
    for yaw in (-0.42, 0.42):                                          # a strong head turn keeps the order
        g = rng(5, 0)
        ms = render_face(g, 128, 64, params=face_params(g, yaw=yaw, glasses=''))[1]
        assert cx(ms['l_eye']) > cx(ms['r_eye']) and cx(ms['l_brow']) > cx(ms['r_brow'])


def test_hair_mask_goes_on_under_the_hat_in_the_files(tmp_path):
    hats = [i for i in range(200) if face_params(rng(0, i)).hat][:2]   # faces synthesize(seed=0) draws with a hat
    assert len(hats) == 2
    for id in hats:
        synthesize(tmp_path, n=1, start_id=id, workers=1, **SMALL)
        ms = read_masks(tmp_path, id)
        under = ms['hair'] & ms['hat']
        assert under.any(), id
        assert (label_map(ms)[under] == CLASS_INDEX['hat']).all()
        assert (ms['hair'] & ~ms['hat']).any()                        # some hair still shows below the hat
    g = rng(9, 9)                                                      # skin also goes on under the eyes
    ms = render_face(g, 128, 64, params=face_params(g, glasses=''))[1]
    assert (ms['skin'] & ms['l_eye']).any()


def test_image_matches_its_masks():
    g = rng(2, 0)
    p = face_params(g, glasses='', hat='')
    img, ms = render_face(g, 64, 64, params=p)
    skin = img[ms['skin'] & (label_map(ms) == CLASS_INDEX['skin'])].mean(0)
    assert np.abs(skin - np.array(p.skin)).mean() < 40, (skin, p.skin)  # the skin region is painted skin-coloured
    eyes = img[label_map(ms) == CLASS_INDEX['l_eye']].mean()
    assert abs(eyes - img[label_map(ms) == CLASS_INDEX['r_eye']].mean()) < 40  # the two eyes look alike


def test_resume_rewrites_only_the_missing_file(tmp_path):
    synthesize(tmp_path, n=3, workers=1, **SMALL)
    before = files(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.*') if p.name != INDEX}
    gone = tmp_path / 'CelebAMask-HQ-mask-anno' / '0' / '00001_nose.png'
    gone.unlink()
    os.utime(tmp_path / 'CelebA-HQ-img' / '0.jpg', ns=(1, 1))          # so a rewrite would show
    stamps[tmp_path / 'CelebA-HQ-img' / '0.jpg'] = 1
    synthesize(tmp_path, n=3, workers=1, **SMALL)
    assert files(tmp_path).keys() == before.keys() and gone.read_bytes() == before['CelebAMask-HQ-mask-anno/0/00001_nose.png']
    changed = [p for p, t in stamps.items() if p != gone and p.stat().st_mtime_ns != t]
    assert not changed, changed
    assert not [p for p in tmp_path.rglob('.*.tmp')]                   # no temp files left behind


def test_resume_survives_a_lost_or_cut_index(tmp_path):
    synthesize(tmp_path, n=2, workers=1, **SMALL)
    before = files(tmp_path)
    (tmp_path / INDEX).write_text('0,skin no')                         # cut short by a crash
    synthesize(tmp_path, n=2, workers=1, **SMALL)
    assert files(tmp_path).keys() == before.keys()
    assert all(files(tmp_path)[k] == v for k, v in before.items() if k != INDEX)


def test_refuses_folders_that_are_not_synthetic(tmp_path):
    real = tmp_path / 'real'
    (real / 'CelebA-HQ-img').mkdir(parents=True)
    (real / 'CelebA-HQ-img' / '0.jpg').write_bytes(b'real photo')
    with pytest.raises(DataError, match=r'(?s)real.*SYNTHETIC.txt.*Fix:'):
        synthesize(real, n=1, workers=1, **SMALL)
    assert sorted(p.name for p in real.rglob('*')) == ['0.jpg', 'CelebA-HQ-img']   # nothing written
    other = tmp_path / 'other'
    other.mkdir(); (other / 'notes.txt').write_text('mine')
    with pytest.raises(DataError, match='not an empty folder'):
        synthesize(other, n=1, workers=1, **SMALL)
    synth = tmp_path / 'synth'
    synthesize(synth, n=1, seed=0, workers=1, **SMALL)
    with pytest.raises(DataError, match='seed=0'):                    # other settings would mix two data sets
        synthesize(synth, n=1, seed=1, workers=1, **SMALL)
