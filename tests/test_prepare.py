"""prepare: raw -> prepared layout, statistics, resume after an interruption, bad-input policy, refusals."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

import faceseg_lib.prepare as prep_mod
from faceseg_lib.celebamask import ANNO_DIR, IMG_DIR, mask_name, open_raw
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, NUM_CLASSES
from faceseg_lib.prepare import prepare, resize_label
from helpers import M, make_zip, write_raw

IDS = (0, 1, 2, 3, 4, 5, 6, 7, 2001, 4123)
S = 24  # prepared size: images 64 -> 24 (area), masks 32 -> 24 (nearest)


def run(raw, out, **kw):
    kw = {'size': S, 'workers': 1, 'progress': False, **kw}
    return prepare(raw, out, **kw)


def files(out):
    """Relative path -> bytes of everything prepared (meta.json and provenance.json aside: they hold time stamps)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob('*'))
            if p.is_file() and p.name not in ('meta.json', 'provenance.json')}


def stable(meta):
    return {k: v for k, v in meta.items() if k not in ('created', 'written')}


@pytest.fixture
def raw_dir(tmp_path):
    return write_raw(tmp_path / 'raw', ids=IDS)


def test_layout_and_meta(raw_dir, tmp_path):
    out = tmp_path / 'prep'
    meta = run(raw_dir, out)
    assert sorted(p.name for p in (out / 'images').iterdir()) == sorted(f'{i}.jpg' for i in IDS)
    assert sorted(p.name for p in (out / 'labels').iterdir()) == sorted(f'{i}.png' for i in IDS)
    for i in IDS:
        with Image.open(out / 'labels' / f'{i}.png') as lab: assert (lab.mode, lab.size) == ('L', (S, S))
        with Image.open(out / 'images' / f'{i}.jpg') as im: assert (im.mode, im.size, im.format) == ('RGB', (S, S), 'JPEG')
    raw = open_raw(raw_dir)
    lab = cv2.imread(str(out / 'labels' / '2001.png'), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(lab, resize_label(raw.read_label(2001), S))  # combined at mask size, then nearest
    from faceseg_lib.prepare import unpack_bits
    from faceseg_lib.celebamask import part_bits
    from faceseg_lib.labels import label_from_bits
    bits = unpack_bits(cv2.imread(str(out / 'parts' / '2001.png'), cv2.IMREAD_UNCHANGED))  # the part masks, overlaps kept
    assert np.array_equal(bits, resize_label(part_bits(raw.read_pair(2001, image=False)[0][1]), S))
    assert np.array_equal(label_from_bits(bits), lab)
    rows = (out / 'splits.csv').read_text().splitlines()
    assert rows[0] == 'id,split' and [int(r.split(',')[0]) for r in rows[1:]] == sorted(IDS)
    split = dict(r.split(',') for r in rows[1:])
    on_disk = json.loads((out / 'meta.json').read_text())
    assert on_disk == meta
    assert meta['format'] == 'faceseg-prepared' and meta['version'] == 2 and meta['size'] == S
    assert meta['classes'] == list(CLASSES) and meta['skipped'] == [] and meta['source'] == str(raw_dir)
    assert meta['split_method'] == 'fractions:0.8,0.1,0.1'
    assert meta['counts'] == {s: list(split.values()).count(s) for s in ('train', 'val', 'test')} == {'train': 8, 'val': 1, 'test': 1}
    for s in ('train', 'val', 'test'):
        labs = [cv2.imread(str(out / 'labels' / f'{i}.png'), cv2.IMREAD_UNCHANGED) for i, t in split.items() if t == s]
        assert meta['class_pixels'][s] == np.bincount(np.concatenate([l.ravel() for l in labs]), minlength=NUM_CLASSES).tolist()
        assert meta['class_images'][s] == [sum(int((l == c).any()) for l in labs) for c in range(NUM_CLASSES)]
    assert meta['class_images']['train'][CLASSES.index('hat')] == 8 and meta['class_pixels']['train'][CLASSES.index('nose')] == 0


def test_resume_after_an_interrupted_run(raw_dir, tmp_path, monkeypatch):
    whole = tmp_path / 'whole'
    expected = run(raw_dir, whole)

    out, real, calls = tmp_path / 'prep', prep_mod.prepare_one, []
    def dies_midway(id):
        if len(calls) == 6: raise KeyboardInterrupt  # the run is killed while working on the 7th id
        calls.append(id)
        return real(id)
    monkeypatch.setattr(prep_mod, 'prepare_one', dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run(raw_dir, out)
    monkeypatch.undo()
    assert not (out / 'meta.json').exists() and not (out / 'splits.csv').exists()
    done = sorted(calls)
    assert len(list((out / 'labels').iterdir())) == 6
    # what a kill can also leave: a temporary file half written, and an id with its image but not yet its label
    (out / 'labels' / f'{done[-1]}.png').unlink()
    (out / 'labels' / f'{done[0]}.png.4242.tmp').write_bytes(b'\x89PNG half')
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for i in done[:-1] for p in (out / 'images' / f'{i}.jpg', out / 'labels' / f'{i}.png')}

    meta = run(raw_dir, out, workers=2)
    assert meta['written'] == len(IDS) - 5
    assert files(out) == files(whole)  # byte for byte what an uninterrupted run gives; no *.tmp left
    assert stable(meta) == stable(expected)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # finished files were not rewritten
    assert run(raw_dir, out)['written'] == 0  # idempotent


def test_zip_in_parallel_gives_the_same_dataset(raw_dir, tmp_path):
    a = run(raw_dir, tmp_path / 'a')
    b = run(make_zip(raw_dir, tmp_path / 'CelebAMask-HQ.zip'), tmp_path / 'b', workers=2, chunksize=2)
    assert files(tmp_path / 'a') == files(tmp_path / 'b')
    assert {k: v for k, v in stable(a).items() if k != 'source'} == {k: v for k, v in stable(b).items() if k != 'source'}
    assert b['source'].endswith('CelebAMask-HQ.zip')


def make_bad(raw_dir):
    """Four bad ids: a truncated JPEG (1), an unknown part (2), a mask of the wrong size (3), masks without image (6)."""
    jpg = raw_dir / IMG_DIR / '1.jpg'
    jpg.write_bytes(jpg.read_bytes()[:200])
    cv2.imwrite(str(raw_dir / ANNO_DIR / '0' / '00002_beard.png'), np.zeros((M, M), np.uint8))
    cv2.imwrite(str(raw_dir / mask_name(3, 'hair')), np.zeros((M // 2, M // 2), np.uint8))
    (raw_dir / IMG_DIR / '6.jpg').unlink()
    return {1: jpg, 2: raw_dir / ANNO_DIR / '0' / '00002_beard.png', 3: raw_dir / mask_name(3, 'hair'),
            6: raw_dir / ANNO_DIR / '0' / '00006_'}


def test_strict_reports_every_bad_id_at_once(raw_dir, tmp_path):
    bad = make_bad(raw_dir)
    out = tmp_path / 'prep'
    with pytest.raises(DataError) as e:
        run(raw_dir, out, workers=2)
    msg = str(e.value)
    assert len(e.value.problems) == 4 and msg.count('Fix:') == 4 and "on_bad='skip'" in msg
    for f in bad.values(): assert str(f) in msg
    good = sorted(int(p.stem) for p in (out / 'labels').iterdir())
    assert good == [i for i in IDS if i not in bad]  # the good ids are written: a rerun after fixing is fast
    assert not (out / 'meta.json').exists() and not (out / 'splits.csv').exists()


def test_skip_leaves_bad_ids_out_and_records_them(raw_dir, tmp_path, capsys):
    bad = make_bad(raw_dir)
    meta = run(raw_dir, tmp_path / 'prep', on_bad='skip')
    assert sorted({s['id'] for s in meta['skipped']}) == sorted(bad)
    assert all(s['fix'] and s['problem'] and s['file'] for s in meta['skipped'])
    ids = [int(r.split(',')[0]) for r in (tmp_path / 'prep' / 'splits.csv').read_text().splitlines()[1:]]
    assert ids == [i for i in IDS if i not in bad] and sum(meta['counts'].values()) == len(ids)
    out = capsys.readouterr().out
    assert 'skipped 4 bad id(s)' in out and str(bad[1]) in out


def test_refuses_to_write_inside_the_raw_folder(raw_dir, tmp_path):
    for out in (raw_dir, raw_dir / 'prepared', raw_dir / IMG_DIR / 'x'):
        with pytest.raises(DataError, match='inside the raw dataset.*Fix: choose an output folder'):
            run(raw_dir, out)
        assert not (out / 'labels').exists()
    top = tmp_path / 'download'  # given the folder above CelebAMask-HQ/
    top.mkdir()
    raw_dir.rename(top / 'CelebAMask-HQ')
    with pytest.raises(DataError, match='inside the raw dataset'):
        run(top, top / 'prepared')


def test_dataset_level_problems_stop_before_any_work(raw_dir, tmp_path):
    out = tmp_path / 'prep'
    for size in (0, -8, 1.5, True):
        with pytest.raises(DataError, match='Fix: e.g. size=512'):
            run(raw_dir, out, size=size)
    csv = tmp_path / 'split.csv'
    csv.write_text('name,is_train\n' + ''.join(f'{i}.jpg,1\n' for i in (0, 1, 77, 78)))
    with pytest.raises(DataError) as e:
        run(raw_dir, out, split=csv)
    assert str(csv) in str(e.value) and '[77, 78]' in str(e.value) and 'Fix:' in str(e.value)
    with pytest.raises(DataError, match=r'requested id\(s\) \(first: \[99\]\)'):
        run(raw_dir, out, ids=[0, 99])
    with pytest.raises(DataError, match='Fix: download'):
        run(tmp_path / 'nothing', out)
    assert not out.exists()


def test_another_size_into_the_same_folder_is_refused(raw_dir, tmp_path):
    out = tmp_path / 'prep'
    run(raw_dir, out, ids=[0, 1])
    with pytest.raises(DataError, match=f'size {S}, not 32.*Fix'):
        run(raw_dir, out, size=32)
    (out / 'meta.json').unlink()  # an interrupted first run has no meta.json: the labels tell the size
    with pytest.raises(DataError, match=f'size {S}, not 32'):
        run(raw_dir, out, size=32)


def test_split_csv_and_ids_subset(raw_dir, tmp_path):
    csv = tmp_path / 'orig.csv'
    csv.write_text('name,is_train\n' + ''.join(f'{i:05d},{int(i != 5)}\n' for i in IDS))
    meta = run(raw_dir, tmp_path / 'a', split=csv)
    assert meta['split_method'] == 'csv:orig.csv'
    assert meta['counts'] == {'train': 9, 'val': 0, 'test': 1}  # 9 train rows: int(0.9) = 0 of them are validation
    meta = run(raw_dir, tmp_path / 'b', ids=[4123, 0, 1], size=2 * M + 8)  # larger than the image: upscaled
    assert sum(meta['counts'].values()) == 3 and sorted(p.stem for p in (tmp_path / 'b' / 'images').iterdir()) == ['0', '1', '4123']
    assert cv2.imread(str(tmp_path / 'b' / 'images' / '0.jpg')).shape == (2 * M + 8, 2 * M + 8, 3)


def test_prepare_a_few_real_sample_ids(sample_dir, tmp_path):
    ids = open_raw(sample_dir).ids()[:8]
    meta = prepare(sample_dir, tmp_path / 'prep', size=64, ids=ids, workers=2, progress=False)
    assert sum(meta['counts'].values()) == 8 and meta['skipped'] == []
    for i in ids:
        lab = cv2.imread(str(tmp_path / 'prep' / 'labels' / f'{i}.png'), cv2.IMREAD_UNCHANGED)
        assert lab.shape == (64, 64) and lab.max() <= 18
    total = np.sum([meta['class_images'][s] for s in ('train', 'val', 'test')], 0)
    assert total[CLASSES.index('skin')] == 8 and total[CLASSES.index('hair')] >= 6


def test_official_split_from_a_zip_that_holds_only_the_mapping_file(raw_dir, tmp_path):
    """The official zip has CelebA-HQ-to-CelebA-mapping.txt but not CelebA's list_eval_partition.txt: --split auto
    must still give CelebA's partition, which is contiguous by original file number."""
    from faceseg_lib.celebamask import MAPPING_FILE
    originals = {0: 1, 1: 162770, 2: 162771, 3: 182637, 4: 182638, 5: 202599, 6: 100, 7: 170000, 2001: 190000, 4123: 5}
    (raw_dir / MAPPING_FILE).write_text('idx orig_idx orig_file\n' + ''.join(f'{i} {n - 1} {n:06d}.jpg\n' for i, n in originals.items()))
    meta = run(make_zip(raw_dir, tmp_path / 'CelebAMask-HQ.zip'), tmp_path / 'out', split='auto')
    by_number = lambda n: 'train' if n <= 162770 else 'val' if n <= 182637 else 'test'
    written = dict(line.split(',') for line in (tmp_path / 'out' / 'splits.csv').read_text().split()[1:])
    assert meta['split_method'] == 'official'
    assert {int(i): s for i, s in written.items()} == {i: by_number(n) for i, n in originals.items()}
    assert meta['counts'] == {'train': 4, 'val': 3, 'test': 3}
