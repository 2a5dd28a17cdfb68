"""The same entry point under torchrun: 2 CPU processes (gloo), metrics reduced over the whole val set, only rank 0 writes."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from faceseg_lib.labels import CLASSES
from faceseg_lib.history import load_history
from helpers import SIZE, evaluate_checkpoint, f1_from_counts

pytestmark = pytest.mark.usefixtures('one_thread')


def run_killing_group_on_timeout(cmd, timeout):
    """subprocess.run, but a hung run takes its worker processes with it."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()
        pytest.fail(f'torchrun did not finish in {timeout} s')
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.mark.slow
def test_torchrun_two_processes_meet_the_metrics_contract(train_set, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'faceseg_lib.train',
           '--data-dir', str(train_set), '--out-dir', str(tmp_path), '--name', 'ddp', '--arch', 'Unet', '--encoder', 'resnet18',
           '--encoder-weights', 'None', '--size', str(SIZE), '--batch-size', '2', '--epochs', '2', '--max-steps', '2',
           '--workers', '0']  # the default's logit adjustment: both checkpoints hold the offset validation scored with
    r = run_killing_group_on_timeout(cmd, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('epoch 1/2 ') == 1 and r.stdout.count('epoch 2/2 ') == 1, r.stdout  # rank 0 alone logs
    assert 'x 2' in r.stdout  # two processes took part
    run = tmp_path / 'ddp'
    assert sorted(p.name for p in run.iterdir()) == ['best.pt', 'config.json', 'history.csv', 'last.pt']  # no stray files
    h = load_history(run)
    assert h['epoch'].tolist() == [1, 2]
    last = torch.load(run / 'last.pt', weights_only=True)
    assert last['extra']['world_size'] == 2 and last['extra']['steps_per_epoch'] == 2

    # the val scores in history.csv are those of the whole val split (5 images, sharded 3 + 2 without padding):
    # a single-process evaluation of the saved checkpoints gives the same per-class F1 and mean F1
    for name in ('last.pt', 'best.pt'):
        m, ckpt = evaluate_checkpoint(run / name, train_set)
        row = h.iloc[ckpt['metrics']['epoch'] - 1]
        assert ckpt['metrics']['pixels'] == m.sum() == 5 * SIZE * SIZE, name
        np.testing.assert_allclose(f1_from_counts(m), row[[f'f1_{c}' for c in CLASSES]].to_numpy(float), atol=1e-12, err_msg=name)
        assert abs(np.nanmean(f1_from_counts(m)[1:]) - row['val_mean_f1']) < 1e-12, name
