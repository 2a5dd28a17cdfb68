"""Fault injection: `prepare`, `train` (default workers) and a sweep are killed with SIGKILL at several points; the
rerun (prepare, sweep) or `--resume` (train) ends with the results of a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import faceseg_lib
from faceseg_lib.synthetic import synthesize

pytestmark = pytest.mark.slow
ENV = {**os.environ, 'PYTHONPATH': str(Path(faceseg_lib.__file__).parents[1]), 'OMP_NUM_THREADS': '1', 'FACESEG_PROGRESS': '0'}


def start(args, cwd) -> subprocess.Popen:
    "`faceseg ARGS` in its own process group (its loader workers and notebook kernels die with it)."
    return subprocess.Popen([sys.executable, '-m', 'faceseg_lib.cli', *map(str, args)], cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    "SIGKILL `proc`'s group as soon as `ready()` holds; whether it was killed (False: it ended first)."
    end = time.time() + timeout
    while proc.poll() is None and time.time() < end:
        if ready(): os.killpg(proc.pid, signal.SIGKILL); proc.wait(); return True
        time.sleep(0.002)
    proc.wait()
    return False


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('faults')
    synthesize(root / 'raw', n=24, seed=0, image_size=256, mask_size=128, workers=1, progress=False)
    return root / 'raw'


def test_prepare_killed_then_rerun_equals_an_uninterrupted_run(raw, tmp_path):
    args = lambda out: ['prepare', raw, out, '--size', '64', '--split', 'fractions:0.6,0.2,0.2', '--workers', '1', '-q']
    finish(start(args(tmp_path / 'straight'), tmp_path))
    out, landed = tmp_path / 'killed', []
    for k in (1, 8, 16):  # killed after k images, then once more while writing splits.csv / meta.json
        n = lambda: len(list((out / 'images').glob('*.jpg'))) if (out / 'images').is_dir() else 0
        if kill_when(start(args(out), tmp_path), lambda: n() >= k): landed.append(n())
    assert landed and min(landed) < 24  # at least one kill landed half-way
    finish(start(args(out), tmp_path))
    a, b = files(tmp_path / 'straight'), files(out)
    meta = lambda f: {k: v for k, v in json.loads(f['meta.json']).items() if k not in ('written', 'created')}
    assert meta(a) == meta(b)  # how many files this run wrote, and when, are the only differences
    stamps = ('meta.json', 'provenance.json')  # the files' mtimes are in provenance.json
    assert {k: v for k, v in a.items() if k not in stamps} == {k: v for k, v in b.items() if k not in stamps}


def weights(run: Path, name: str) -> dict:
    return torch.load(run / name, weights_only=True)['state_dict']


@pytest.fixture(scope='module')
def prepared(raw, tmp_path_factory) -> Path:
    from faceseg_lib.prepare import prepare
    out = tmp_path_factory.mktemp('faults-prep') / 'prep'
    prepare(raw, out, size=64, split='fractions:0.6,0.2,0.2', workers=1, progress=False)
    return out


def test_train_killed_then_resumed_equals_an_uninterrupted_run(prepared, tmp_path):
    # FPN has dropout; --workers is left at its default (-1: loader worker processes)
    args = lambda name, *more: ['train', '--data-dir', prepared, '--size', '64', '--arch', 'FPN', '--encoder', 'resnet18',
                                '--encoder-weights', 'None', '--epochs', '3', '--max-steps', '2', '--batch-size', '4',
                                '--warmup-epochs', '0.5', '--out-dir', tmp_path / 'runs', '--name', name, *more]
    straight = start(args('straight'), tmp_path)  # side by side with the killed one
    run = tmp_path / 'runs' / 'killed'
    rows = lambda: len((run / 'history.csv').read_text().splitlines()) - 1 if (run / 'history.csv').is_file() else 0
    assert kill_when(start(args('killed'), tmp_path), lambda: (run / 'config.json').is_file())  # before epoch 1 ends
    assert kill_when(start(args('killed', '--resume'), tmp_path), lambda: (run / 'last.pt').is_file())  # after epoch 1
    assert kill_when(start(args('killed', '--resume'), tmp_path), lambda: rows() >= 2)  # after epoch 2's history row
    finish(start(args('killed', '--resume'), tmp_path)); finish(straight)
    a, b = (pd.read_csv(tmp_path / 'runs' / n / 'history.csv').drop(columns=['seconds']) for n in ('straight', 'killed'))
    pd.testing.assert_frame_equal(a, b)
    for name in ('last.pt', 'best.pt'):
        wa, wb = weights(tmp_path / 'runs' / 'straight', name), weights(run, name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_sweep_killed_then_rerun_equals_an_uninterrupted_sweep(prepared, tmp_path):
    args = lambda out: ['sweep', 'Unet:mobilenet_v2', '--data-dir', prepared, '--epochs', '2', '--size', '64', '--devices', 'cpu',
                        '--set', 'encoder_weights=None', '--set', 'max_steps=2', '--set', 'batch_size=4', '--set', 'workers=0',
                        '--out', out, '-q']
    straight = start(args(tmp_path / 'straight'), tmp_path)
    run = tmp_path / 'killed' / 'Unet-mobilenet_v2'
    assert kill_when(start(args(tmp_path / 'killed'), tmp_path), lambda: (run / 'last.pt').is_file())  # mid-training
    finish(start(args(tmp_path / 'killed'), tmp_path)); finish(straight)
    a, b = (json.loads((tmp_path / n / 'Unet-mobilenet_v2' / 'metrics.json').read_text()) for n in ('straight', 'killed'))
    drop = lambda m: {k: v for k, v in m.items() if k not in ('seconds', 'checkpoint', 'data_dir')}
    assert drop(a) == drop(b)
    wa, wb = (weights(tmp_path / n / 'Unet-mobilenet_v2', 'best.pt') for n in ('straight', 'killed'))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (pd.read_csv(tmp_path / n / 'results.csv') for n in ('straight', 'killed'))
    keep = [c for c in ra.columns if 'second' not in c and c not in ('images_per_s', 'run', 'attempts')]
    pd.testing.assert_frame_equal(ra[keep], rb[keep])
