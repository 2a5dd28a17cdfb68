"""Training: config checks before any work, learning on the synthetic set, loadable checkpoints, resume = uninterrupted run."""
import json
from dataclasses import replace
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import faceseg_lib.config as settings
import faceseg_lib.losses as losses
import faceseg_lib.optim as optim
import faceseg_lib.run_folder as run_folder
import faceseg_lib.train as train
from faceseg_lib.dataset import FaceParsingDataset, eval_transform
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, NUM_CLASSES
from faceseg_lib.models import create_model
from faceseg_lib.config import TrainConfig
from faceseg_lib.history import HISTORY_COLUMNS, load_history
from faceseg_lib.train import fit
from helpers import SIZE, evaluate_checkpoint, f1_from_counts, killed_after_first_epoch

TINY = dict(arch='Unet', encoder='resnet18', encoder_weights=None, size=SIZE, batch_size=4, workers=0)

pytestmark = pytest.mark.usefixtures('one_thread')


def tiny(train_set, tmp_path, **kw):
    return TrainConfig(**{'data_dir': str(train_set), 'out_dir': str(tmp_path / 'runs'), **TINY, **kw})


# --- config: one definition, checked before any work -------------------------------------------------------------

@pytest.mark.parametrize('kw, message', [
    (dict(arch='Unett'), "unknown architecture 'Unett'"),
    (dict(encoder='resnet35'), "unknown encoder 'resnet35'"),
    (dict(lr=-1e-3), 'config.lr: must be a positive number'),
    (dict(lr=0), 'config.lr: must be a positive number'),
    (dict(lr=float('inf')), 'config.lr: must be a positive number'),  # once trained to a NaN best.pt marked best
    (dict(size=100, arch='FPN'), 'divisible by 32'),
    (dict(loss='dise'), 'config.loss'),
    (dict(epochs=0), 'config.epochs'),
    (dict(freeze_bn=True), 'config.freeze_bn: keeps the pretrained running statistics'),  # from random weights
    (dict(paste=1.5), 'config.paste: must be a chance in [0, 1]'),
    (dict(encoder_lr=0), 'config.encoder_lr: must be a share of lr'),
    (dict(logit_adjust=1.5), 'config.logit_adjust: must be a share in [0, 1]'),
    (dict(decoder_dropout=1.0), 'config.decoder_dropout: must be a chance in [0, 1)'),
    (dict(decoder_dropout=0.2), 'config.decoder_dropout: Unet has no decoder dropout'),  # TINY is a Unet
    (dict(val_split='nope'), 'nope'),
])
def test_bad_config_fails_before_any_work(train_set, tmp_path, monkeypatch, kw, message):
    monkeypatch.setattr(train, 'create_model', lambda *a, **k: pytest.fail('a model was built before the config was checked'))
    with pytest.raises(DataError, match='Fix') as e:
        fit(tiny(train_set, tmp_path, **kw))
    assert message in str(e.value)
    assert not (tmp_path / 'runs').exists()


def test_unknown_names_list_the_valid_ones(train_set, tmp_path):
    with pytest.raises(DataError) as e: fit(tiny(train_set, tmp_path, arch='Unett'))
    assert all(a in str(e.value) for a in ('FPN', 'DeepLabV3Plus', 'Segformer'))
    with pytest.raises(DataError) as e: fit(tiny(train_set, tmp_path, optimizer='adamx'))
    assert 'adamw, adam, sgd' in str(e.value)


def test_missing_dataset_names_path_and_fix(tmp_path):
    with pytest.raises(DataError) as e:
        fit(TrainConfig(data_dir=str(tmp_path / 'nowhere'), out_dir=str(tmp_path / 'runs'), **TINY))
    assert str(tmp_path / 'nowhere') in str(e.value) and 'faceseg prepare' in str(e.value)
    assert not (tmp_path / 'runs').exists()


def test_all_problems_reported_at_once(train_set, tmp_path):
    with pytest.raises(DataError) as e: fit(tiny(train_set, tmp_path, lr=-1, epochs=0, loss='x'))
    assert {p.file for p in e.value.problems} >= {'config.lr', 'config.epochs', 'config.loss'}


def test_presets_fill_only_unset_recipe_fields():
    c = train.resolved(TrainConfig(preset='original', lr=3e-4))
    assert (c.head, c.loss, c.optimizer, c.lr, c.scheduler, c.augmentation, c.batch_size, c.best_by) == (
        'multilabel', 'dice_smp', 'adam', 3e-4, 'none', 'none', 15, 'part_fscore')
    d = train.resolved(TrainConfig())
    assert (d.loss, d.optimizer, d.lr, d.scheduler, d.augmentation) == ('dice_bce', 'adamw', 1e-3, 'onecycle', 'geometric')
    assert set(settings.RECIPE_FIELDS) == set(settings.PRESETS['original']) <= set(settings.config_fields())
    e = train.resolved(train.config_from_args(['--scheduler', 'none', '--augmentation', 'none', '--optimizer', 'None']))
    assert (e.scheduler, e.augmentation, e.optimizer) == ('none', 'none', 'adamw')  # 'none' is a value, 'None' means unset


def test_cli_flags_are_the_config_fields():
    p = train.build_train_parser()
    dests = {a.dest for a in p._actions} - {'help'}
    assert dests == set(settings.config_fields())
    flags = {s for a in p._actions for s in a.option_strings}
    assert all(f"--{f.replace('_', '-')}" in flags and f'--{f}' in flags for f in settings.config_fields())
    assert train.config_from_args([]) == TrainConfig()
    help_text = p.format_help()
    assert "output of `faceseg prepare" in help_text and 'mixed precision' in help_text  # help = the fields' comments


def test_module_entry_point_and_exit_codes(tmp_path, capsys):
    r = subprocess.run([sys.executable, '-m', 'faceseg_lib.train', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '--encoder-weights' in r.stdout and '--resume' in r.stdout
    assert train.main(['--data-dir', str(tmp_path / 'none'), '--out-dir', str(tmp_path / 'runs')]) == 2
    assert 'Fix' in capsys.readouterr().err


# --- learning, checkpoints, resume ---------------------------------------------------------------------------------

@pytest.mark.parametrize('loss, ratio', [('dice', 0.93), ('dice_ce', 0.7), ('dice_ohem', 0.8), ('ce_lovasz', 0.8), ('dice_bce', 0.8), ('dice_ebce', 0.8)])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(train_set, loss, ratio):
    torch.manual_seed(0)
    ds = FaceParsingDataset(train_set, 'train', transform=eval_transform(SIZE))
    x = torch.stack([ds[i][0] for i in range(4)]); y = torch.stack([ds[i][1] for i in range(4)])
    model = create_model('Unet', 'resnet18', None)
    cfg = train.resolved(TrainConfig(lr=1e-3, loss=loss))
    opt, loss_fn = optim.make_optimizer(model, cfg), losses.LOSSES[cfg.loss]
    model.train()
    with torch.no_grad(): before = loss_fn(model(x), y).item()
    for _ in range(15):
        step_loss = loss_fn(model(x), y); opt.zero_grad(); step_loss.backward(); opt.step()
    with torch.no_grad(): after = loss_fn(model(x), y).item()
    assert after < ratio * before, (before, after)


def test_fit_writes_run_folder_and_loadable_checkpoints(train_set, tmp_path):
    run = fit(tiny(train_set, tmp_path, epochs=2, max_steps=2, name='r'))
    assert sorted(p.name for p in run.iterdir()) == ['best.pt', 'config.json', 'history.csv', 'last.pt']
    fields = settings.config_fields()
    config = json.loads((run / 'config.json').read_text())
    assert list(config) == fields and config['loss'] == 'dice_bce' and config['name'] == 'r'
    h = load_history(run)
    assert list(h.columns) == list(HISTORY_COLUMNS) and h['epoch'].tolist() == [1, 2]
    assert (h['train_loss'] > 0).all() and h['lr'].gt(0).all() and h['seconds'].gt(0).all()
    for name in ('best.pt', 'last.pt'):
        ckpt = torch.load(run / name, weights_only=True)
        assert list(ckpt['config']) == fields and ckpt['classes'] == list(CLASSES)
    best_epoch = int(h['val_mean_f1'].fillna(-1).idxmax()) + 1  # first best (ties keep the earlier epoch)
    # the rebuilt best model reproduces, on the whole val split, exactly the scores the run recorded for that epoch
    m, ckpt = evaluate_checkpoint(run / 'best.pt', train_set)
    assert ckpt['metrics']['epoch'] == best_epoch
    assert ckpt['metrics']['pixels'] == m.sum() == 5 * SIZE * SIZE
    row = h.iloc[best_epoch - 1]
    np.testing.assert_allclose(f1_from_counts(m), row[[f'f1_{c}' for c in CLASSES]].to_numpy(float), atol=1e-12)
    assert math.isclose(np.nanmean(f1_from_counts(m)[1:]), row['val_mean_f1'], abs_tol=1e-12)
    last = torch.load(run / 'last.pt', weights_only=True)
    assert {'optimizer', 'scheduler', 'scaler'} <= set(last) and last['extra']['epoch'] == 2


def test_existing_run_is_never_overwritten(train_set, tmp_path):
    run = tmp_path / 'runs' / 'taken'; run.mkdir(parents=True); (run / 'notes.txt').write_text('mine')
    with pytest.raises(DataError, match='resume'):
        fit(tiny(train_set, tmp_path, name='taken'))
    assert [p.name for p in run.iterdir()] == ['notes.txt']


@pytest.mark.parametrize('ema', [0.0, 0.9])
def test_resume_after_interruption_equals_uninterrupted_run(train_set, tmp_path, monkeypatch, ema):
    kw = dict(epochs=2, max_steps=2, warmup_epochs=0.5, ema=ema)  # with a weight average, it must come back from last.pt too
    straight = fit(tiny(train_set, tmp_path, name='straight', **kw))

    killed_after_first_epoch(fit, tiny(train_set, tmp_path, name='killed', **kw), monkeypatch)
    assert len(load_history(tmp_path / 'runs' / 'killed')) == 1

    with pytest.raises(DataError, match='lr: run has'):  # a changed config is refused
        fit(tiny(train_set, tmp_path, name='killed', resume=True, lr=0.1, **kw))
    # workers may change on resume: augmentation is seeded per item, not per worker
    resumed = fit(tiny(train_set, tmp_path, name='killed', resume=True, **{**kw, 'workers': 1}))
    a, b = load_history(straight), load_history(resumed)
    assert a['epoch'].tolist() == b['epoch'].tolist() == [1, 2]
    np.testing.assert_allclose(a.drop(columns=['seconds', 'dead_parts']).to_numpy(float),
                               b.drop(columns=['seconds', 'dead_parts']).to_numpy(float), rtol=1e-6, atol=1e-7)
    assert a['dead_parts'].tolist() == b['dead_parts'].tolist()
    for name in ('last.pt', 'best.pt'):
        wa, wb = (torch.load(r / name, weights_only=True)['state_dict'] for r in (straight, resumed))
        assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa), name
    assert fit(tiny(train_set, tmp_path, name='killed', resume=True, **kw)) == resumed  # finished: nothing more to do


def test_a_last_pt_saved_before_it_kept_raw_weights_resumes_from_them(train_set, tmp_path, monkeypatch):
    """last.pt files written before extra['raw'] existed hold the training weights themselves (no offset folded in):
    a resume of one trains on from them and ends where the uninterrupted run does."""
    kw = dict(epochs=2, max_steps=2, warmup_epochs=0.5, ema=0.9)  # a weight average and the default's logit offset
    straight = fit(tiny(train_set, tmp_path, name='straight', **kw))
    killed_after_first_epoch(fit, tiny(train_set, tmp_path, name='old', **kw), monkeypatch)
    last_pt = tmp_path / 'runs' / 'old' / 'last.pt'
    ckpt = torch.load(last_pt, weights_only=True)
    raw = ckpt['extra'].pop('raw'); ckpt['metrics'].pop('logit_offset')
    assert set(raw) == set(ckpt['state_dict'])  # under a weight average every tensor differs from the scored model
    torch.save({**ckpt, 'state_dict': raw}, last_pt)  # as the kit wrote it before
    resumed = fit(tiny(train_set, tmp_path, name='old', resume=True, **kw))
    a, b = load_history(straight), load_history(resumed)
    np.testing.assert_allclose(a.drop(columns=['seconds', 'dead_parts']).to_numpy(float),
                               b.drop(columns=['seconds', 'dead_parts']).to_numpy(float), rtol=1e-6, atol=1e-7)


def test_ema_is_what_validation_scores_and_best_pt_keeps(train_set, tmp_path):
    """With --ema the run validates the moving average of the weights and best.pt holds it, not the raw weights."""
    run = fit(tiny(train_set, tmp_path, name='ema', epochs=2, max_steps=3, ema=0.5, lr=1e-2))
    last = torch.load(run / 'last.pt', weights_only=True)
    ema = last['extra']['ema']
    assert int(ema['n_averaged']) == 6  # every optimizer step of both epochs
    raw, avg = last['extra']['raw'], {k[len('module.'):]: v for k, v in ema.items() if k.startswith('module.')}
    assert set(avg) == set(raw) and any(not torch.allclose(raw[k].float(), avg[k].float()) for k in raw)  # an average, not a copy
    assert set(last['state_dict']) == set(raw)  # last.pt holds the average as validation scored it, the raw weights for resume
    h = load_history(run)
    for name in ('best.pt', 'last.pt'):  # each reproduces the score the run recorded for its epoch
        m, ckpt = evaluate_checkpoint(run / name, train_set)
        assert math.isclose(np.nanmean(f1_from_counts(m)[1:]), h.iloc[ckpt['metrics']['epoch'] - 1]['val_mean_f1'], abs_tol=1e-12), name
    key, offset = 'segmentation_head.0.bias', torch.tensor(last['metrics']['logit_offset'])  # the default's logit adjustment
    assert all(torch.equal(last['state_dict'][k], avg[k]) for k in avg if k != key)
    assert torch.allclose(last['state_dict'][key], avg[key] + offset, atol=1e-6)
    with pytest.raises(DataError, match=r'config.ema: must be a decay in \[0, 1\)'):
        fit(tiny(train_set, tmp_path, name='bad', ema=1.0))


def test_logit_adjust_is_what_validation_scores_and_best_pt_decodes(train_set, tmp_path):
    """--logit-adjust 1 with dice_bce: validation adds the offset of `losses.logit_offset` (from the training split's
    pixels) to the logits, best.pt and last.pt hold it in their head's bias, so either alone gives back the recorded
    score, which the raw training weights (last.pt's extra['raw'], what a resume trains on) do not; another loss gets
    no offset. A barely trained model, whose logits are small, so the offset moves its argmax."""
    from faceseg_lib.dataset import label_stats
    run = fit(tiny(train_set, tmp_path, name='adj', epochs=1, max_steps=1, loss='dice_bce', logit_adjust=1.0, lr=1e-6))
    best, last = (torch.load(run / n, weights_only=True) for n in ('best.pt', 'last.pt'))
    want = losses.split_offset(label_stats(train_set, 'train', progress=False), 1.0)
    key = 'segmentation_head.0.bias'
    for ckpt in (best, last):
        assert torch.allclose(torch.tensor(ckpt['metrics']['logit_offset']), want) and want.abs().max() > 1
    assert list(last['extra']['raw']) == [key] and torch.equal(best['state_dict'][key], last['state_dict'][key])
    assert torch.allclose(last['state_dict'][key] - last['extra']['raw'][key], want, atol=1e-6)
    torch.save({**last, 'state_dict': {**last['state_dict'], **last['extra']['raw']}}, tmp_path / 'raw.pt')
    recorded = load_history(run).iloc[0]['val_mean_f1']
    best_f1, last_f1, raw_f1 = (np.nanmean(f1_from_counts(evaluate_checkpoint(p, train_set)[0])[1:])
                                for p in (run / 'best.pt', run / 'last.pt', tmp_path / 'raw.pt'))
    assert math.isclose(best_f1, recorded, abs_tol=1e-12) and math.isclose(last_f1, recorded, abs_tol=1e-12)
    assert not math.isclose(raw_f1, recorded, abs_tol=1e-3)
    other = fit(tiny(train_set, tmp_path, name='ce', epochs=1, max_steps=1, loss='dice_ce', logit_adjust=1.0))
    assert 'logit_offset' not in torch.load(other / 'best.pt', weights_only=True)['metrics']


def test_seeded_runs_repeat_and_seeds_differ(train_set, tmp_path):
    kw = dict(epochs=1, max_steps=2)
    a, b, c = (load_history(fit(tiny(train_set, tmp_path, name=n, seed=s, **kw))) for n, s in (('a', 0), ('b', 0), ('c', 1)))
    assert a['train_loss'][0] == b['train_loss'][0] and a['val_loss'][0] == b['val_loss'][0]
    assert a['train_loss'][0] != c['train_loss'][0]


def test_dice_charges_absent_classes_and_losses_are_registered():
    assert set(losses.LOSSES) == {'dice', 'ce', 'dice_ce', 'focal', 'dice_smp', 'ohem', 'dice_ohem', 'lovasz', 'ce_lovasz', 'dice_bce', 'dice_ebce', 'dice_rce', 'dice_rbce'}
    target = torch.zeros(2, 8, 8, dtype=torch.long); target[:, 2:5, 2:5] = CLASSES.index('skin')
    right = torch.nn.functional.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2) * 10.0
    wrong = right.clone(); wrong[:, CLASSES.index('hat'), :2] = 20.0  # a hat where there is none
    assert losses.dice_loss(right, target) < 0.01
    extra_ours = losses.dice_loss(wrong, target) - losses.dice_loss(right, target)
    extra_smp = losses.LOSSES['dice_smp'](wrong, target) - losses.LOSSES['dice_smp'](right, target)
    assert extra_ours > extra_smp + 0.9 / NUM_CLASSES


def _epoch_setup(train_set, **kw):
    c = train.resolved(TrainConfig(data_dir=str(train_set), **{**TINY, 'batch_size': 2, **kw}))
    torch.manual_seed(0)
    model = create_model(c.arch, c.encoder, None)
    opt = optim.make_optimizer(model, c)
    dl, _ = train.make_loaders(c)
    return c, model, opt, optim.make_scheduler(opt, c, len(dl)), torch.amp.GradScaler('cpu', enabled=False), dl


def test_encoder_lr_trains_the_encoder_at_its_share_of_the_lr_all_run_long(train_set):
    """encoder_lr=0.1: smp's encoder gets a tenth of the decoder's lr at every step of the one-cycle schedule, the
    decoder and head the full lr, and every trainable tensor is in exactly one group."""
    c, model, opt, sched, scaler, dl = _epoch_setup(train_set, encoder_lr=0.1, scheduler='onecycle', epochs=2)
    encoder = {id(p) for p in model.encoder.parameters()}
    in_groups = [id(p) for g in opt.param_groups for p in g['params']]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters()) and len(set(in_groups)) == len(in_groups)
    assert [all(id(p) in encoder for p in g['params']) for g in opt.param_groups] == [False, False, True, True]
    x, y = next(iter(dl))
    for _ in range(3):
        loss = losses.LOSSES['dice_ce'](model(x.float() / 255), y.long()); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        assert [round(g['lr'] / opt.param_groups[0]['lr'], 6) for g in opt.param_groups] == [1, 1, 0.1, 0.1]


def test_losses_read_back_in_groups_add_up_as_read_one_by_one(train_set, monkeypatch):
    """train_epoch reads losses from the device SYNC_EVERY steps at a time; the epoch's sum must be the per-step one."""
    c, model, opt, sched, scaler, dl = _epoch_setup(train_set)
    seen_losses = []
    def recording(logits, y):
        loss = losses.LOSSES[c.loss](logits, y); seen_losses.append((loss.item(), len(y))); return loss
    monkeypatch.setattr(train, 'SYNC_EVERY', 3)  # 7 steps: read after steps 3 and 6, and the last one at the end
    total, seen, lr = train.train_epoch(model, dl, opt, sched, scaler, recording, len(dl), torch.device('cpu'))
    assert len(dl) == 7 and seen == 14 == sum(n for _, n in seen_losses)
    assert total == pytest.approx(sum(v * n for v, n in seen_losses), rel=1e-12)
    vl, vn, cm, image_f1, part_f = train.evaluate_loader(model, dl, losses.LOSSES[c.loss], torch.device("cpu"))
    assert len(image_f1) == 14 and np.nanmax(image_f1) <= 1  # one mean F1 per image, for the spread in history.csv
    assert len(part_f) == 14 and ((0 <= part_f) & (part_f <= 1)).all()  # the original's score of each image
    assert vn == 14 and math.isfinite(vl) and cm.tensor.sum() == 14 * SIZE * SIZE


def test_a_non_finite_loss_stops_training_naming_its_step(train_set, monkeypatch):
    c, model, opt, sched, scaler, dl = _epoch_setup(train_set)
    calls = []
    def blows_up_at_step_5(logits, y):
        calls.append(1); loss = losses.LOSSES[c.loss](logits, y)
        return loss * float('nan') if len(calls) == 5 else loss
    monkeypatch.setattr(train, 'SYNC_EVERY', 4)  # the nan is read back in the second group, at the epoch's end
    with pytest.raises(FloatingPointError, match=r'the loss became nan at step 5\. Fix: lower lr'):
        train.train_epoch(model, dl, opt, sched, scaler, blows_up_at_step_5, len(dl), torch.device('cpu'), desc='epoch 1/1')


@pytest.mark.parametrize('error, shown', [(OSError('Cannot reach huggingface.co\nretry later'), 'Cannot reach huggingface.co'),
                                          (OSError(), 'OSError')])  # an empty message once raised IndexError
def test_weights_that_cannot_be_downloaded_name_the_setting_and_fix(train_set, tmp_path, monkeypatch, error, shown):
    def offline(*args, **kwargs): raise error
    monkeypatch.setattr(train, 'create_model', offline)
    with pytest.raises(DataError) as e:
        fit(tiny(train_set, tmp_path, encoder_weights='imagenet', epochs=1))
    msg = str(e.value)
    assert "config.encoder_weights='imagenet'" in msg and f'cannot be loaded ({shown})' in msg and 'encoder_weights=None' in msg


# --- no silent dead classes ----------------------------------------------------------------------------------------

def _collapsed_class_f1(loss_name: str) -> float:
    """F1 of 'nose' after 300 AdamW steps of a 1x1-conv parser whose nose logit starts collapsed (bias -16)."""
    torch.manual_seed(0)
    nose = CLASSES.index('nose')
    target = torch.zeros(4, 16, 16, dtype=torch.long); target[:, 2:14, 2:14] = CLASSES.index('skin'); target[:, 6:10, 7:9] = nose
    x = torch.randn(4, 8, 16, 16); x[:, 0] = (target == nose).float() * 2 - 1  # one feature says where the nose is
    model = torch.nn.Conv2d(8, NUM_CLASSES, 1)
    with torch.no_grad(): model.bias[nose] = -16.0  # what a too-fast warm-up leaves behind: p(nose) ~ 1e-7 everywhere
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad(); losses.LOSSES[loss_name](model(x), target).backward(); opt.step()
    from faceseg_lib.metrics import ConfusionMatrix
    return float(ConfusionMatrix().update(model(x).detach(), target).per_class_f1()[nose])


def test_the_default_loss_revives_a_collapsed_class_where_pure_dice_leaves_it_dead():
    """Softmax Dice gives a collapsed class a gradient ~ p(1-p), below Adam's eps: it stays dead (measured F1 0.0).
    The default's per-pixel cross-entropy term pulls every pixel of it with a gradient of about -1 (measured F1 1.0)."""
    assert _collapsed_class_f1('dice') == 0.0                       # the old default
    assert _collapsed_class_f1(settings.PRESETS['default']['loss']) > 0.9


@pytest.mark.parametrize('head', ['multiclass', 'multilabel'])
def test_rarity_weighted_loss_takes_its_weights_from_the_training_split(train_set, tmp_path, head):
    """loss='dice_rce': training binds class weights max(1, 0.5 / f), f the share of training images showing the part:
    1 for background and the parts most faces show, more for the rare ones, and a missed rare pixel costs that much more."""
    from faceseg_lib.dataset import label_stats, part_rarity
    c = train.resolved(tiny(train_set, tmp_path, loss='dice_rce', head=head))
    w = train.training_setup(c, torch.device('cpu'), 2).loss_fn.weights
    f = (label_stats(train_set, 'train', progress=False)[list(CLASSES[1:])] > 0).mean().to_numpy()
    np.testing.assert_allclose(w.numpy(), [1.0, *np.where(f > 0, np.maximum(1, 0.5 / np.maximum(f, 1e-12)), 1)], rtol=1e-6)
    np.testing.assert_allclose(w[1:].numpy(), part_rarity(label_stats(train_set, 'train', progress=False), power=1.0), rtol=1e-6)
    rare, common = int(w[1:].argmax()) + 1, CLASSES.index('skin')
    assert w[common] == 1 and w[rare] > 2 and f[rare - 1] < 0.25, (w, f)
    if head == 'multiclass':  # a missed rare pixel among skin: the weighted CE is above plain CE by the weight's share
        target = torch.full((1, 4, 4), common); target[0, 0, 0] = rare
        logits = torch.nn.functional.one_hot(torch.full((1, 4, 4), common), NUM_CLASSES).permute(0, 3, 1, 2) * 5.0
        assert losses.weighted_ce_loss(logits, target, w) > 1.5 * torch.nn.functional.cross_entropy(logits, target)
    assert train.training_setup(train.resolved(tiny(train_set, tmp_path, head=head)), torch.device('cpu'), 2).loss_fn is losses.make_loss('dice_bce', head)  # the default's loss takes no weights


@pytest.mark.parametrize('head', ['multiclass', 'multilabel'])
def test_rare_pixel_share_loss_lifts_only_the_parts_the_training_split_shows_rarely(train_set, tmp_path, head):
    """loss='dice_rbce': training binds the same rarity weights as dice_rce, and the loss lifts by in-batch pixel share
    (as dice_bce) only the parts they put above 1: a missed rare pixel costs more than under Dice + CE, a missed skin
    pixel (a part most faces show) costs what Dice + CE charges."""
    c = train.resolved(tiny(train_set, tmp_path, loss='dice_rbce', head=head))
    fn = train.training_setup(c, torch.device('cpu'), 2).loss_fn
    rce = train.training_setup(train.resolved(tiny(train_set, tmp_path, loss='dice_rce', head=head)), torch.device('cpu'), 2).loss_fn
    torch.testing.assert_close(fn.weights, rce.weights)
    rare, skin = int(fn.weights[1:].argmax()) + 1, CLASSES.index('skin')
    assert fn.weights[rare] > 1 and fn.weights[skin] == 1
    plain = losses.make_loss('dice_ce', head)
    def cost(missed: int) -> tuple[float, float]:  # (dice_rbce, dice_ce) of a batch whose one `missed` pixel is called background
        target = torch.zeros(1, 8, 8, dtype=torch.long); target[0, :4] = skin; target[0, 7, 7] = missed
        logits = torch.nn.functional.one_hot(torch.where(target == missed, 0, target), NUM_CLASSES).permute(0, 3, 1, 2) * 5.0
        if head == 'multilabel': target, logits = (1 << (target - 1)).where(target > 0, 0).int(), logits[:, 1:] * 2 - 5.0
        return fn(logits.float(), target).item(), plain(logits.float(), target).item()
    lifted, unlifted = cost(rare), cost(skin)
    assert lifted[0] > lifted[1] + 0.1, lifted  # 0.33 more (multiclass), 0.14 (multilabel) for the one pixel
    assert unlifted[0] == pytest.approx(unlifted[1], rel=1e-5), unlifted


@pytest.mark.parametrize('sampling', ['repeat', 'repeat_linear'])
def test_repeat_sampling_draws_images_with_rare_parts_more_often(train_set, tmp_path, sampling):
    """sampling='repeat' / 'repeat_linear': each image drawn in proportion to its repeat factor (LVIS's sqrt(t / f), or
    t / f), the epoch as long as a uniform one."""
    from faceseg_lib.dataset import REPEAT_POWERS, RepeatFactorSampler, label_stats, repeat_factors
    c = train.resolved(tiny(train_set, tmp_path, sampling=sampling))
    train_dl, _ = train.make_loaders(c)
    sampler = train_dl.sampler.sampler
    assert isinstance(sampler, RepeatFactorSampler) and len(sampler) == len(train_dl.dataset)
    stats = label_stats(train_set, ids=train_dl.dataset.dataset.ids, progress=False)
    factors = repeat_factors(stats, power=REPEAT_POWERS[sampling])
    assert factors.max() > 1.2 * factors.min(), factors  # the synthetic set has parts in few images
    if sampling == 'repeat_linear':  # the square of LVIS's factors
        np.testing.assert_allclose(factors, repeat_factors(stats) ** 2)
    counts = np.zeros(len(factors))
    for epoch in range(400):
        train_dl.sampler.set_epoch(epoch); np.add.at(counts, [i for _, i in train_dl.sampler], 1)
    np.testing.assert_allclose(counts / counts.sum(), factors / factors.sum(), rtol=0.25)
    uniform = train.make_loaders(train.resolved(tiny(train_set, tmp_path, sampling='uniform')))[0]
    assert len(uniform.sampler) == len(train_dl.sampler)  # same steps per epoch: budgets stay comparable
    assert fit(tiny(train_set, tmp_path, sampling=sampling, epochs=1, max_steps=1, name=sampling)).is_dir()


@pytest.mark.parametrize('head', ['multiclass', 'multilabel'])
def test_paste_puts_a_rare_part_into_training_images_before_the_augmentations(train_set, tmp_path, head):
    """paste=p: the training transform starts with RarePartPaste over the training split's rare parts (the flip and
    affine then move a pasted part with the face); at p=1 every training item shows a rare part; 0 pastes nothing."""
    from faceseg_lib.dataset import label_map
    from faceseg_lib.paste import RarePartPaste
    train_dl, _ = train.make_loaders(train.resolved(tiny(train_set, tmp_path, head=head, paste=1.0, augmentation='none')))
    items = train_dl.dataset
    first = items.dataset.transform.transform.transforms[0]
    assert isinstance(first, RarePartPaste) and first.sources and first.target == ('parts' if head == 'multilabel' else 'labels')
    rare = torch.tensor(sorted(first.sources))
    stored = [torch.isin(label_map(torch.as_tensor(items.dataset.read(i)[1])), rare).any() for i in range(len(items))]
    assert not all(stored)  # as stored, some training images show no rare part
    for i in range(len(items)):
        shown = torch.isin(label_map(items[(i, i)][1]), rare)
        assert shown.any(), f'item {i} got no rare part'
        assert torch.equal(shown, torch.isin(label_map(items[(i, i)][1]), rare))  # the same seed, the same paste
    plain = train.make_loaders(train.resolved(tiny(train_set, tmp_path, head=head)))[0]
    assert not any(isinstance(t, RarePartPaste) for t in plain.dataset.dataset.transform.transform.transforms)
    assert fit(tiny(train_set, tmp_path, head=head, paste=0.5, epochs=1, max_steps=1, name=f'paste-{head}')).is_dir()


def test_the_default_draws_rare_parts_more_often_from_pretrained_weights_only(train_set, tmp_path):
    """The recipe study at 256 px: rare-part sampling (t / f) gains from ImageNet weights on every fold and loses from
    random weights on every fold, so the default preset samples that way from pretrained weights only."""
    from faceseg_lib.dataset import RepeatFactorSampler
    weights = 'imagenet'  # nothing is downloaded: only the config and the loaders are made
    pretrained = train.resolved(tiny(train_set, tmp_path, encoder_weights=weights))
    assert pretrained.sampling == settings.PRETRAINED_PRESETS['default']['sampling'] == 'repeat_linear'
    assert isinstance(train.make_loaders(pretrained)[0].sampler.sampler, RepeatFactorSampler)
    assert train.resolved(tiny(train_set, tmp_path, encoder_weights=None)).sampling == 'uniform'
    assert train.resolved(tiny(train_set, tmp_path, encoder_weights=weights, sampling='uniform')).sampling == 'uniform'
    assert train.resolved(tiny(train_set, tmp_path, encoder_weights=weights, preset='careful')).sampling == 'uniform'


def test_decoder_dropout_trains_and_travels_with_best_pt(train_set, tmp_path):
    """The default from random weights trains FPN without the spatial dropout before its head (the study's gain);
    `careful` keeps FPN's own 0.2. best.pt records the setting and rebuilds the same model."""
    from faceseg_lib.models import model_from_checkpoint
    drops = lambda m: [d.p for d in m.modules() if isinstance(d, torch.nn.Dropout2d)]
    for preset, saved, p in (('default', 0.0, 0.0), ('careful', None, 0.2)):
        run = fit(tiny(train_set, tmp_path, arch='FPN', preset=preset, epochs=1, max_steps=1, name=f'drop-{preset}'))
        model, ckpt = model_from_checkpoint(run / 'best.pt')
        assert (ckpt['config']['decoder_dropout'], drops(model)) == (saved, [p])


def test_freeze_bn_trains_on_the_pretrained_statistics_and_keeps_them(train_set, tmp_path):
    """`freeze_bn` keeps the encoder's BatchNorm on the running statistics of the weights file (best.pt holds them
    unchanged); without it a few steps move every one of them."""
    src = create_model('Unet', 'resnet18', encoder_weights=None)
    with torch.no_grad():
        for b in train.encoder_batch_norms(src): b.running_mean.uniform_(-0.5, 0.5); b.running_var.uniform_(0.5, 2.0)  # not a fresh layer's 0 and 1
    torch.save(src.encoder.state_dict(), tmp_path / 'r18.pth')
    stats = {k: v for k, v in src.encoder.state_dict().items() if k.endswith(('running_mean', 'running_var'))}
    def trained(freeze_bn):
        run = fit(tiny(train_set, tmp_path, encoder_weights=str(tmp_path / 'r18.pth'), freeze_bn=freeze_bn, epochs=1, max_steps=2,
                       name=f'freeze-{freeze_bn}'))
        sd = torch.load(run / 'best.pt', weights_only=True)['state_dict']
        return [torch.equal(sd[f'encoder.{k}'], v) for k, v in stats.items()]
    assert len(stats) == 40 and all(trained(True))
    assert not any(trained(False))


def test_fit_reports_a_dead_part_in_the_epoch_line_history_and_checkpoint(train_set, tmp_path, monkeypatch, capsys):
    nose = CLASSES.index('nose')
    class NoNose(torch.nn.Module):  # a model that can never predict the nose
        def __init__(self, m): super().__init__(); self.m = m; self.faceseg_spec = m.faceseg_spec
        def forward(self, x):
            out = self.m(x).clone(); out[:, nose] = -1e4; return out
    build = train.create_model
    monkeypatch.setattr(train, 'create_model', lambda *a, **k: NoNose(build(*a, **k)))
    run = fit(tiny(train_set, tmp_path, epochs=1, max_steps=1, name='dead', logit_adjust=0.0))  # the wrapper has no head bias to fold an offset into
    out = capsys.readouterr().out
    epoch_line = next(l for l in out.splitlines() if l.startswith('epoch 1/1'))
    assert "WARNING: dead parts (present in 'val', F1 0)" in epoch_line and 'nose' in epoch_line
    assert 'Fix: train longer' in next(l for l in out.splitlines() if l.startswith('done:'))
    assert "WARNING: the 'val' split has 5 images (fewer than 200)" in out  # too few to choose an epoch by mean F1
    h = load_history(run)
    assert 0 <= h['val_image_f1_mean'][0] <= 1 and h['val_image_f1_std'][0] >= 0
    assert 'nose' in load_history(run)['dead_parts'][0].split()
    assert 'nose' in torch.load(run / 'best.pt', weights_only=True)['metrics']['dead_parts']


# --- faults: a diverging run, two runs under one name -------------------------------------------------------------

def test_a_run_that_diverges_leaves_nothing_that_blocks_the_same_command(train_set, tmp_path, monkeypatch, capsys):
    nan_loss = lambda logits, y: losses.LOSSES['ce'](logits, y) * float('nan')
    monkeypatch.setitem(losses.LOSSES, settings.PRESETS['default']['loss'], nan_loss)  # the default loss, as with --lr 1e6
    argv = ['--data-dir', str(train_set), '--out-dir', str(tmp_path / 'runs'), '--name', 'lr1e6', '--arch', 'Unet',
            '--encoder', 'resnet18', '--encoder-weights', 'None', '--size', '64', '--batch-size', '4', '--workers', '0',
            '--epochs', '1', '--max-steps', '1']
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert 'the loss became nan at step 1. Fix: lower lr' in err and 'Traceback' not in err
    assert not (tmp_path / 'runs' / 'lr1e6').exists()  # no config.json left to refuse the rerun
    monkeypatch.undo()
    assert train.main(argv) == 0 and (tmp_path / 'runs' / 'lr1e6' / 'best.pt').is_file()


def test_two_trainings_under_one_name_the_second_stops(tmp_path):
    c = train.resolved(TrainConfig(name='twin'))
    run_folder.claim(tmp_path / 'twin', c)  # the first one's config.json is there
    with pytest.raises(DataError, match='was just taken by another training started under the same name.*resume=True'):
        run_folder.claim(tmp_path / 'twin', c)
    assert [p.name for p in (tmp_path / 'twin').iterdir()] == ['config.json']


def test_a_run_saved_before_a_field_existed_resumes_with_its_neutral_value(train_set, tmp_path):
    """A config saved before `paste` existed trained without pasting: it resumes under paste=0, not under paste=0.5."""
    from dataclasses import asdict
    c = train.resolved(tiny(train_set, tmp_path))
    old = {k: v for k, v in asdict(c).items() if k not in settings.LATER_FIELDS}
    assert c.paste == settings.LATER_FIELDS['paste'] == 0.0 and c.logit_adjust == 0.5  # the default now decodes with an offset
    assert run_folder.config_diff(old, c) == ['logit_adjust: run has 0.0, now 0.5',  # which a run saved before it did not: refused
                                              'decoder_dropout: run has None, now 0.0']  # nor with the architecture's own dropout
    c = replace(c, logit_adjust=0.0, decoder_dropout=None)  # resumed with the values it trained with
    assert run_folder.config_diff(old, c) == []
    assert c.encoder_lr == settings.LATER_FIELDS['encoder_lr'] == 1.0  # one lr for all, as runs before the field trained
    assert run_folder.config_diff(old, replace(c, paste=0.5)) == ['paste: run has 0.0, now 0.5']


def test_a_run_killed_while_claiming_its_name_resumes_as_a_fresh_start(tmp_path):
    c = train.resolved(TrainConfig(name='cut', resume=True))
    (tmp_path / 'cut').mkdir(); (tmp_path / 'cut' / 'config.json').write_text('')  # an older kit: killed between open('x') and write
    assert run_folder.resume_state(tmp_path / 'cut', c, 4, 1) is None  # nothing to continue: train from the start
    run_folder.claim(tmp_path / 'cut', c)
    assert json.loads((tmp_path / 'cut' / 'config.json').read_text())['name'] == 'cut'
    run_folder.claim(tmp_path / 'fresh', replace(c, resume=False))  # claimed whole through a hard link, no temp file left
    assert [p.name for p in (tmp_path / 'fresh').iterdir()] == ['config.json']
    assert json.loads((tmp_path / 'fresh' / 'config.json').read_text())['resume'] is False
