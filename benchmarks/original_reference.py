"""The original project's recipe, run the original way: plain PyTorch and segmentation_models_pytorch, no faceseg
training code, on the recipe study's folds, to hold `--preset original` against.

The recipe, as the original project trains it: FPN + mobilenet_v2 with an 18-channel sigmoid head (one channel per
part mask; parts may overlap), smp's `DiceLoss(mode='multilabel', from_logits=False)` on the sigmoid outputs, Adam at
1e-4, batch 15, no augmentation, inputs scaled to 0..1 and normalised by the ImageNet mean and std, and the best
epoch chosen by the micro F-score at threshold 0.5 over the 18 channels (smp's old `utils.metrics.Fscore`, averaged
over the validation images one at a time, as its validation loop did).

Only the data files and the final score use faceseg: the folds' images and overlapping part masks are read with
faceseg's readers, and the chosen epoch's model is scored exactly as the study scores every recipe (dataset-level
mean F1 over the 18 parts of the label map: the most probable part above 0.5, else background). Run r trains on the
other folds of `STUDY/folds-SIZE/fold{r}` with seed r, like the study's run r.

    python benchmarks/original_reference.py --work STUDY --size 128 --epochs 10 --runs 3 \\
        --inits imagenet,random --weights /tmp/w/mobilenet_v2-b0353104.pth

It writes STUDY/original-reference-SIZEpx-EPOCHSep.json (one row per run, resumable) and prints the table beside
the study's `original` rows from the same folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'benchmarks')]

from recipe_study import RARE, fold_dir, results_stem  # noqa: E402  the study's rare parts and file layout


def load_fold(fold: Path, split: str):
    "Images (N, 3, H, W) float32 normalised as the original did, and part masks (N, 18, H, W) float32 of one split."
    import pandas as pd
    import torch
    from faceseg_lib.dataset import IMAGENET_MEAN, IMAGENET_STD, read_image, read_parts
    from faceseg_lib.losses import part_masks
    ids = pd.read_csv(fold / 'splits.csv').query('split == @split')['id'].tolist()
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    x = np.stack([((read_image(fold / 'images' / f'{i}.jpg') / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1) for i in ids])
    y = part_masks(torch.from_numpy(np.stack([read_parts(fold / 'parts' / f'{i}.png') for i in ids]))).numpy()
    return x, y


def fscore(pr, gt, threshold: float = 0.5, eps: float = 1e-7) -> float:
    "smp's old utils.metrics.Fscore: one micro F-score over every pixel and channel of the tensors given."
    pr = (pr > threshold).float(); tp = (pr * gt).sum(); fp = pr.sum() - tp; fn = gt.sum() - tp
    return float((2 * tp + eps) / (2 * tp + fn + fp + eps))


def train_one(fold: Path, init: str, weights: str | None, seed: int, epochs: int, threads: int) -> dict:
    import segmentation_models_pytorch as smp
    import torch
    torch.set_num_threads(threads); torch.manual_seed(seed); np.random.seed(seed)
    xt, yt = load_fold(fold, 'train'); xv, yv = load_fold(fold, 'val')
    model = smp.FPN('mobilenet_v2', encoder_weights=None, classes=18, activation='sigmoid')
    if init == 'imagenet':  # the weights smp would fetch as 'imagenet' (torchvision's), from a local file
        state = torch.load(weights, map_location='cpu', weights_only=True)
        model.encoder.load_state_dict(state)  # smp's encoder drops the classifier keys
    loss_fn = smp.losses.DiceLoss(mode='multilabel', from_logits=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        model.train(); t0 = time.time(); losses = []
        for idx in torch.randperm(len(xt), generator=g).split(15):
            x, y = torch.from_numpy(xt[idx.numpy()]), torch.from_numpy(yt[idx.numpy()])
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step(); losses.append(loss.item())
        model.eval()
        with torch.no_grad(): score = float(np.mean([fscore(model(torch.from_numpy(xv[i:i + 1])), torch.from_numpy(yv[i:i + 1])) for i in range(len(xv))]))
        history.append({'epoch': epoch, 'train_loss': float(np.mean(losses)), 'val_fscore': score, 'seconds': round(time.time() - t0, 1)})
        print(f'  epoch {epoch}: loss {history[-1]["train_loss"]:.4f}, val micro F-score {score:.4f}', flush=True)
        if score > best: best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {'model': model, 'best_fscore': best, 'best_epoch': max(history, key=lambda h: h['val_fscore'])['epoch'],
            'history': history, 'val': (xv, yv)}


def score(model, xv, fold: Path, split: str = 'val') -> dict:
    "The study's score of a model on a split of the fold (images `xv`, from `load_fold`): faceseg's decode and dataset-level F1."
    import pandas as pd
    import torch
    from faceseg_lib.dataset import read_label
    from faceseg_lib.labels import CLASSES
    from faceseg_lib.metrics import ConfusionMatrix
    from faceseg_lib.models import class_scores
    ids = pd.read_csv(fold / 'splits.csv').query('split == @split')['id'].tolist()
    cm = ConfusionMatrix()
    with torch.no_grad():
        for i, id in enumerate(ids):
            probs = model(torch.from_numpy(xv[i:i + 1]))
            logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))  # class_scores takes the head's logits
            pred = class_scores(logits, 'multilabel').argmax(1)
            cm.update(pred, torch.from_numpy(read_label(fold / 'labels' / f'{id}.png')[None].astype(np.int64)))
    f1 = dict(zip(CLASSES, cm.per_class_f1().tolist()))
    return {f'{split}_mean_f1': cm.mean_f1(), **{f'f1_{k}': f1[k] for k in RARE}, 'dead_parts': ' '.join(cm.dead_parts()),
            'f1': {k: None if np.isnan(v) else float(v) for k, v in f1.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', type=Path, required=True, help="the recipe study's --work folder (its folds are reused)")
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--first-run', type=int, default=0, help='train runs FIRST_RUN..RUNS-1 only (the earlier ones measured elsewhere)')
    ap.add_argument('--inits', default='imagenet,random')
    ap.add_argument('--weights', help='torchvision ImageNet mobilenet_v2 state dict (.pth) for the imagenet init')
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    out = a.work / f'original-reference-{a.size}px-{a.epochs}ep.json'
    rows = json.loads(out.read_text()) if out.is_file() else []
    for init in a.inits.split(','):
        if init == 'imagenet' and not a.weights: sys.exit('original_reference: --weights is needed for the imagenet init')
        for r in range(a.first_run, a.runs):
            if any(x['init'] == init and x['run'] == r for x in rows): continue
            fold = fold_dir(a.work, a.size, r)
            if not (fold / 'splits.csv').is_file(): sys.exit(f'original_reference: {fold} is missing: run benchmarks/recipe_study.py --work {a.work} first')
            print(f'original, run the original way: {init} init, fold {r}, seed {r}', flush=True)
            t0 = time.time()
            res = train_one(fold, init, a.weights, r, a.epochs, a.threads)
            rows.append({'init': init, 'run': r, 'best_epoch': res['best_epoch'], 'best_micro_fscore': res['best_fscore'],
                         **score(res['model'], res['val'][0], fold), 'minutes': round((time.time() - t0) / 60, 1), 'history': res['history']})
            out.write_text(json.dumps(rows, indent=1))
            print(f'  val mean F1 {rows[-1]["val_mean_f1"]:.4f}', flush=True)
    print(table(rows, results_stem(a.work, a.size, a.epochs).with_suffix('.csv')))
    print(f'\n{out}')
    return 0


def table(rows: list[dict], study_csv: Path) -> str:
    "Mean and spread per init of the reference runs, beside the study's `original` recipe on the same folds."
    import pandas as pd
    lines = ['| recipe | init | runs | val mean F1 | ' + ' | '.join(RARE) + ' |', '|---' * (4 + len(RARE)) + '|']
    study = pd.read_csv(study_csv) if study_csv.is_file() else pd.DataFrame()
    for init in sorted({r['init'] for r in rows}):
        groups = [('original, run the original way (this script)', pd.DataFrame([r for r in rows if r['init'] == init]))]
        if len(study): groups.append(('faceseg --preset original', study[(study['recipe'] == 'original') & (study['init'] == init)]))
        for name, g in groups:
            if not len(g): continue
            m = g['val_mean_f1']
            lines.append(f'| {name} | {init} | {len(g)} | {m.mean():.3f} ± {m.std(ddof=1) if len(g) > 1 else 0:.3f} | '
                         + ' | '.join(f'{g[f"f1_{k}"].mean():.2f}' for k in RARE) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
