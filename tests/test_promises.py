"""What faceseg guarantees (README, "What faceseg guarantees"): exact resume whatever the workers, results replaced
only once the new ones exist, bad input named without a traceback. Issue 12's cases, one test each."""
import numpy as np
import pytest
import torch

import faceseg_lib.train as train
from faceseg_lib.config import TrainConfig
from faceseg_lib.history import load_history
from faceseg_lib.train import fit
from helpers import SIZE

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

    save = train.save_checkpoint
    def save_then_die(path, *args, **kwargs):  # killed right after epoch 1's last.pt is on disk
        save(path, *args, **kwargs)
        if path.name == 'last.pt': raise KeyboardInterrupt
    monkeypatch.setattr(train, 'save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(config(train_set, tmp_path, name='killed', workers=2))
    monkeypatch.setattr(train, 'save_checkpoint', save)
    same_run(serial, fit(config(train_set, tmp_path, name='killed', workers=2, resume=True)))
