"""What faceseg guarantees (README, "What faceseg guarantees"): exact resume whatever the workers, results replaced
only once the new ones exist, bad input named without a traceback. Issue 12's cases, one test each."""
import json

import cv2

import numpy as np
import pytest
import torch

from faceseg_lib.config import TrainConfig
from faceseg_lib.history import load_history
from faceseg_lib.train import fit
from helpers import SIZE, killed_after_first_epoch

# FPN's segmentation head has dropout: it draws from torch's global generator at every step
DROPOUT = dict(arch='FPN', encoder='resnet18', encoder_weights=None, size=SIZE, batch_size=4, epochs=2, max_steps=2,
               warmup_epochs=0.5)


def config(train_set, tmp_path, **kw):
    return TrainConfig(**{'data_dir': str(train_set), 'out_dir': str(tmp_path / 'runs'), **DROPOUT, **kw})


def same_run(a, b):
    "Two run folders hold the same history (but for timings) and the same last.pt weights."
    ha, hb = load_history(a), load_history(b)
    cols = [c for c in ha.columns if c not in ('seconds', 'dead_parts')]
    np.testing.assert_allclose(ha[cols].to_numpy(float), hb[cols].to_numpy(float), rtol=1e-6, atol=1e-7)
    wa, wb = (torch.load(r / 'last.pt', weights_only=True)['state_dict'] for r in (a, b))
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


@pytest.mark.usefixtures('one_thread')
def test_workers_do_not_change_the_run_and_resume_is_exact_with_workers(train_set, tmp_path, monkeypatch):
    serial = fit(config(train_set, tmp_path, name='serial', workers=0))
    parallel = fit(config(train_set, tmp_path, name='parallel', workers=2))
    same_run(serial, parallel)

    killed_after_first_epoch(fit, config(train_set, tmp_path, name='killed', workers=2), monkeypatch)
    same_run(serial, fit(config(train_set, tmp_path, name='killed', workers=2, resume=True)))


# --- bad input: named with its fix, no traceback, nothing touched outside the output folder ----------------------

import os
import shutil
import zipfile
from pathlib import Path


from faceseg_lib.cli import main
from faceseg_lib.synthetic import synthesize


@pytest.fixture(scope='module')
def kit(tmp_path_factory, train_set):
    """A raw tree (8 faces), the shared prepared set and a checkpoint trained for one step on it."""
    root = tmp_path_factory.mktemp('kit')
    synthesize(root / 'raw', n=8, seed=0, image_size=128, mask_size=64, workers=1, progress=False)
    torch.set_num_threads(1)
    run = fit(TrainConfig(data_dir=str(train_set), out_dir=str(root / 'runs'), name='base', arch='Unet', encoder='resnet18',
                          encoder_weights=None, size=SIZE, batch_size=4, epochs=1, max_steps=1, workers=0))
    return {'raw': root / 'raw', 'prep': train_set, 'ckpt': run / 'best.pt'}


def damaged_jpeg(data: bytes) -> bytes:
    "The JPEG with bytes of its scan data overwritten; its end marker intact."
    bad = bytearray(data); k = len(bad) // 3
    bad[k:k + 60] = np.random.default_rng(1).integers(0, 256, 60, np.uint8).tobytes()
    return bytes(bad)


def _bad_crc_zip(raw: Path, zip_path: Path, member: str) -> Path:
    "The raw tree zipped like the official zip, with one member's stored bytes flipped (its CRC no longer matches)."
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_STORED) as zf:
        for p in sorted(raw.rglob('*')): zf.write(p, 'CelebAMask-HQ/' + p.relative_to(raw).as_posix())
    with zipfile.ZipFile(zip_path) as zf: info = zf.getinfo('CelebAMask-HQ/' + member)
    data = bytearray(zip_path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 100] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    return zip_path


def _tampered(prep: Path, here: Path) -> Path:
    "A copy of the prepared set with its labels overwritten by junk."
    copy = here / 'prep'; shutil.copytree(prep, copy)
    for p in (copy / 'labels').glob('*.png'): p.write_bytes(b'junk')
    return copy


def setup(case: str, kit: dict, here: Path) -> list[str]:
    "Make the bad input of `case` inside `here` (the working directory); the command line."
    ckpt = here / 'run' / 'best.pt'; ckpt.parent.mkdir(); os.link(kit['ckpt'], ckpt)  # results land beside the checkpoint
    photo = here / 'photo.jpg'; shutil.copy(next((kit['prep'] / 'images').glob('*.jpg')), photo)
    (here / 'afile').write_text('not a folder')
    raw = lambda: shutil.copytree(kit['raw'], here / 'raw')
    if case == 'prepare into a file': raw(); return ['prepare', 'raw', 'afile', '--size', '64', '--workers', '1', '-q']
    if case == 'predict into a file': return ['predict', 'run/best.pt', 'photo.jpg', '--out', 'afile', '--no-detect', '-q']
    if case == 'train into a file':
        return ['train', '--data-dir', str(kit['prep']), '--size', '64', '--encoder-weights', 'None', '--out-dir', 'afile']
    if case == 'test --batch-size 0': return ['test', 'run/best.pt', '--batch-size', '0', '-q']
    if case == 'export --n-check 0': return ['export', 'run/best.pt', 'm.onnx', '--n-check', '0']
    if case == 'predict --device gpu0': return ['predict', 'run/best.pt', 'photo.jpg', '--device', 'gpu0', '--no-detect', '-q']
    if case == 'predict --device cuda without CUDA':
        return ['predict', 'run/best.pt', 'photo.jpg', '--device', 'cuda', '--no-detect', '-q']
    if case == 'export --size 65 (FPN needs multiples of 32)':
        from faceseg_lib.models import create_model, save_checkpoint
        save_checkpoint(here / 'fpn.pt', create_model('FPN', 'mobilenet_v2', None), {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': 64})
        return ['export', 'fpn.pt', 'out/m.onnx', '--size', '65']
    if case == 'sweep --set lr=abc': return ['sweep', 'Unet:resnet18', '--set', 'lr=abc', '--data-dir', str(kit['prep'])]
    if case == 'predict with a typo in the checkpoint, --overwrite':
        assert main(['predict', 'run/best.pt', 'photo.jpg', '--out', 'pout', '--no-detect', '-q']) == 0
        return ['predict', 'run/bset.pt', 'photo.jpg', '--out', 'pout', '--no-detect', '--overwrite', '-q']
    if case == 'test rerun without --overwrite':
        assert main(['test', 'run/best.pt', '--data', str(kit['prep']), '--n-examples', '0', '-q']) == 0
        return ['test', 'run/best.pt', '--data', str(kit['prep']), '--n-examples', '0', '-q']
    if case == 'prepare a damaged JPEG':
        raw(); p = here / 'raw' / 'CelebA-HQ-img' / '3.jpg'; p.write_bytes(damaged_jpeg(p.read_bytes()))
        return ['prepare', 'raw', 'prep', '--size', '64', '--workers', '1', '-q']
    if case == 'prepare a truncated JPEG':
        raw(); p = here / 'raw' / 'CelebA-HQ-img' / '3.jpg'; p.write_bytes(p.read_bytes()[:-300])
        return ['prepare', 'raw', 'prep', '--size', '64', '--workers', '1', '-q']
    if case == 'prepare a zip member with a bad CRC':
        _bad_crc_zip(kit['raw'], here / 'raw.zip', 'CelebA-HQ-img/3.jpg')
        return ['prepare', 'raw.zip', 'prep', '--size', '64', '--workers', '1', '-q']
    if case == 'prepare a broken symlink as a mask':
        raw(); mask = next((here / 'raw' / 'CelebAMask-HQ-mask-anno' / '0').glob('00003_*.png'))
        mask.unlink(); mask.symlink_to(here / 'gone.png')
        return ['prepare', 'raw', 'prep', '--size', '64', '--workers', '1', '-q']
    if case == 'train on a tampered label, 2 workers':
        return ['train', '--data-dir', str(_tampered(kit['prep'], here)), '--size', '64', '--arch', 'Unet', '--encoder',
                'resnet18', '--encoder-weights', 'None', '--epochs', '1', '--max-steps', '2', '--workers', '2', '--out-dir', 'runs']
    if case == 'test on a tampered label, 2 workers':
        return ['test', 'run/best.pt', '--data', str(_tampered(kit['prep'], here)), '--split', 'train', '--workers', '2', '-q']
    raise KeyError(case)


BAD = {  # case: (text stderr must show: the file or setting named, and the output folder of the command)
    'prepare into a file': ('afile: is a file', None),
    'predict into a file': ('afile: is a file', None),
    'train into a file': ('afile: is a file', None),
    'test --batch-size 0': ('--batch-size 0: must be at least 1', 'run/eval-test'),
    'export --n-check 0': ('--n-check 0', None),
    'predict --device gpu0': ("device 'gpu0': is not a device name", None),
    'predict --device cuda without CUDA': ("device 'cuda': CUDA is not available here", None),
    'sweep --set lr=abc': ('--set lr=abc: is not a valid lr', None),
    'export --size 65 (FPN needs multiples of 32)': ('out/m.onnx: cannot be exported at --size 65', 'out'),
    'predict with a typo in the checkpoint, --overwrite': ('bset.pt', None),   # pout: kept as it was
    'test rerun without --overwrite': ('eval-test: holds the results of an earlier run', None),
    'prepare a damaged JPEG': ('3.jpg: cannot be decoded', 'prep'),
    'prepare a truncated JPEG': ('3.jpg: cannot be decoded', 'prep'),
    'prepare a zip member with a bad CRC': ('3.jpg: cannot be read (BadZipFile', 'prep'),
    'prepare a broken symlink as a mask': ('00003_', 'prep'),
    'train on a tampered label, 2 workers': ('.png: cannot be decoded', 'runs'),
    'test on a tampered label, 2 workers': ('.png: cannot be decoded', 'run/eval-train'),
}


def _tree(root: Path, skip: str | None) -> dict:
    "Every path under `root` but those under `skip`, with a file's size and mtime (a folder's own mtime may change)."
    out = {}
    for p in root.rglob('*'):
        rel = p.relative_to(root).as_posix()
        if skip and (rel == skip or rel.startswith(skip + '/')): continue
        st = p.lstat(); out[rel] = None if p.is_dir() and not p.is_symlink() else (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_named_without_traceback_and_touches_nothing_else(case, kit, tmp_path, monkeypatch, capsys):
    if case.endswith('without CUDA') and torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    monkeypatch.chdir(tmp_path); torch.set_num_threads(1)
    argv = setup(case, kit, tmp_path)
    named, out = BAD[case]
    before = _tree(tmp_path, out); capsys.readouterr()
    rc = main(argv)  # an exception escaping main would be the traceback the user sees
    err = capsys.readouterr().err
    assert rc == 2, (case, rc, err)
    assert named in err and 'Fix:' in err, err
    assert 'Traceback' not in err and 'Caught' not in err and 'worker process' not in err, err
    after = _tree(tmp_path, out)
    assert after == before, f'{case}: changed outside {out}: {set(after.items()) ^ set(before.items())}'


def test_test_overwrite_replaces_the_whole_folder_and_a_failing_one_keeps_it(kit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path); torch.set_num_threads(1)
    ckpt = tmp_path / 'run' / 'best.pt'; ckpt.parent.mkdir(); os.link(kit['ckpt'], ckpt)
    argv = ['test', 'run/best.pt', '--data', str(kit['prep']), '--n-examples', '0', '-q']
    assert main(argv) == 0
    out = tmp_path / 'run' / 'eval-test'; (out / 'figures' / 'worst.png').write_bytes(b'an earlier run with examples')
    before = _tree(out, None)
    assert main(['test', 'run/best.pt', '--data', str(tmp_path / 'gone'), '--overwrite', '-q']) == 2  # fails: no dataset
    assert _tree(out, None) == before and sorted(p.name for p in out.parent.iterdir()) == ['best.pt', 'eval-test']
    assert main([*argv, '--overwrite']) == 0
    assert not (out / 'figures' / 'worst.png').exists() and (out / 'metrics.json').is_file()  # nothing stale beside it


@pytest.mark.slow
def test_a_sweep_whose_every_configuration_failed_exits_non_zero_and_lists_no_figures(kit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('OMP_NUM_THREADS', '1'); torch.set_num_threads(1)
    rc = main(['sweep', 'PAN:mobilenet_v2', '--data-dir', str(kit['prep']), '--size', '64', '--epochs', '1', '--devices', 'cpu',
               '--set', 'encoder_weights=None', '--set', 'max_steps=1', '--out', str(tmp_path / 'sw'), '-q'])  # PAN needs >= 128 px
    out, err = capsys.readouterr()
    assert rc == 2 and 'every configuration failed' in err and 'PAN-mobilenet_v2: failed' in err and '--retry-failed' in err, err
    assert 'results in' in out and not any(f in out for f in ('heatmap.png', 'mean_f1.png')), out
    assert not any((tmp_path / 'sw' / f).exists() for f in ('heatmap.png', 'mean_f1.png'))


def test_a_split_csv_naming_only_some_ids_says_how_many_are_left_out(kit, tmp_path, capsys):
    csv = tmp_path / 'split.csv'; csv.write_text('name,is_train\n0.jpg,1\n1.jpg,1\n2.jpg,0\n')  # 3 of the 8 faces
    assert main(['prepare', str(kit['raw']), str(tmp_path / 'prep'), '--size', '64', '--split', str(csv), '--workers', '1', '-q']) == 0
    assert '5 image(s) that the split does not name left out' in capsys.readouterr().out
    assert json.loads((tmp_path / 'prep' / 'meta.json').read_text())['not_in_split'] == 5


def test_prepare_messages_give_the_files_real_size_and_the_flag_on_the_command_line(kit, tmp_path, capsys):
    raw = tmp_path / 'raw'; shutil.copytree(kit['raw'], raw)
    wide = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), np.uint8)  # masks are square: another aspect ratio
    (raw / 'CelebA-HQ-img' / '3.jpg').write_bytes(cv2.imencode('.jpg', wide)[1].tobytes())
    assert main(['prepare', str(raw), str(tmp_path / 'prep'), '--size', '64', '--workers', '1', '-q']) == 2
    err = capsys.readouterr().err
    assert '3.jpg: is 1024x768 but its masks are 64x64' in err, err  # the file's size, not that of the reduced decode
    assert '--skip-bad' in err and "on_bad='skip'" not in err and 'Traceback' not in err


def test_predict_calls_a_truncated_or_damaged_jpeg_an_error_not_ok(kit, tmp_path):
    from faceseg_lib.predict import predict
    good = cv2.imencode('.jpg', cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8), (9, 9), 3))[1].tobytes()
    (tmp_path / 'truncated.jpg').write_bytes(good[:len(good) * 2 // 3])
    (tmp_path / 'damaged.jpg').write_bytes(damaged_jpeg(good))
    (tmp_path / 'good.jpg').write_bytes(good)
    s = predict(kit['ckpt'], [tmp_path / n for n in ('truncated.jpg', 'damaged.jpg', 'good.jpg')], tmp_path / 'out',
                detect=False, progress=False, log=lambda m: None)
    status = {Path(i['input']).name: (i['status'], i.get('problem') or '') for i in s['items']}
    assert status['good.jpg'][0] == 'ok'
    assert status['truncated.jpg'][0] == 'error' and 'truncated.jpg: is not a whole JPEG (no end-of-image marker: truncated?)' in status['truncated.jpg'][1]
    assert status['damaged.jpg'][0] == 'error' and 'damaged.jpg: is damaged (libjpeg: Corrupt JPEG data' in status['damaged.jpg'][1]


# --- prepare: what each prepared file came from ------------------------------------------------------------------

def _prepared(raw, out, **kw):
    return main(['prepare', str(raw), str(out), '--size', '64', '--split', 'fractions:0.6,0.2,0.2', '--workers', '1', '-q', *kw.get('more', [])])


def _pixels(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob('*')) if p.suffix in ('.jpg', '.png')}


def test_another_source_into_the_same_folder_replaces_the_old_pixels(kit, tmp_path, capsys):
    other = tmp_path / 'other'
    synthesize(other, n=8, seed=5, image_size=128, mask_size=64, workers=1, progress=False)  # same ids, other faces
    assert _prepared(kit['raw'], tmp_path / 'prep') == 0 and _prepared(other, tmp_path / 'fresh') == 0
    assert _prepared(other, tmp_path / 'prep') == 0
    assert _pixels(tmp_path / 'prep') == _pixels(tmp_path / 'fresh')  # not the first source's pixels
    assert json.loads((tmp_path / 'prep' / 'meta.json').read_text())['written'] == 8


def test_a_damaged_prepared_label_or_a_changed_raw_file_is_redone_by_the_rerun(kit, tmp_path):
    raw = tmp_path / 'raw'; shutil.copytree(kit['raw'], raw)
    assert _prepared(raw, tmp_path / 'prep') == 0
    before = _pixels(tmp_path / 'prep')
    label = sorted((tmp_path / 'prep' / 'labels').glob('*.png'))[0]
    lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED); lab[:8] = 3
    cv2.imwrite(str(label), lab)                                   # still a valid PNG of the right size: only its record tells
    assert _prepared(raw, tmp_path / 'prep') == 0 and _pixels(tmp_path / 'prep') == before
    image = raw / 'CelebA-HQ-img' / '2.jpg'
    image.write_bytes((raw / 'CelebA-HQ-img' / '5.jpg').read_bytes())  # a raw file replaced
    assert _prepared(raw, tmp_path / 'prep') == 0
    after = _pixels(tmp_path / 'prep')
    assert after['images/2.jpg'] != before['images/2.jpg'] and after['images/2.jpg'] == after['images/5.jpg']
    assert json.loads((tmp_path / 'prep' / 'meta.json').read_text())['written'] == 1
