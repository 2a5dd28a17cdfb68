"""Why does a part score F1 0? A probe of trained checkpoints on one part, on a split of their prepared datasets.

For each checkpoint it reports, over the split's images: how many show the part and how many pixels it has, how many
pixels the model predicts as the part, the model's probability of the part at the part's own pixels, which class
it predicts there instead, and the part's F1 if its score were multiplied by e^b before the argmax (a bias of b on
its log-probability: does a lower threshold find the part, or has the model not learnt it?).

    python benchmarks/dead_part.py STUDY/runs-256px-10ep/default-bs4-imagenet-r1/best.pt --part neck_l

Each checkpoint is scored on the dataset it was trained on (its config's `data_dir`) unless `--data` names one.

`--ceiling S --data DIR` asks instead whether a decoder that predicts at 1/S of the input (FPN: S = 4) can hold the
part at all: it scores the prediction made from the truth itself pooled to that grid (the log of each class's share
of a cell, upsampled bilinearly as smp upsamples logits), with no model:

    python benchmarks/dead_part.py --ceiling 4 --data STUDY/folds-256/fold1 --split val
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faceseg_lib.core import resolve_device  # noqa: E402
from faceseg_lib.dataset import FaceParsingDataset, model_batch  # noqa: E402
from faceseg_lib.evaluate import load_for_eval  # noqa: E402
from faceseg_lib.labels import CLASSES, NUM_CLASSES  # noqa: E402
from faceseg_lib.metrics import ConfusionMatrix  # noqa: E402
from faceseg_lib.models import model_scores  # noqa: E402

BIASES = (0.0, 2.0, 4.0, 6.0, 8.0)


def new_tally(biases=BIASES) -> dict:
    "Empty counts for `tally`."
    return dict(images=0, true_px=0, pred_px=0, p_sum=0.0, p_max=0.0, p_max_elsewhere=0.0,
                instead=np.zeros(NUM_CLASSES, np.int64), biases=tuple(biases), counts=np.zeros((len(biases), 3), np.int64))


def tally(t: dict, scores: torch.Tensor, y: torch.Tensor, part: int) -> dict:
    "Add a batch to `t`: class scores (N, 19, H, W) from `model_scores` and label maps (N, H, W)."
    logp = scores.float().clamp_min(1e-12).log()
    other = logp.clone(); other[:, part] = -torch.inf
    best_other, instead = other.max(1)
    margin = logp[:, part] - best_other  # > 0 where the argmax is the part
    gt, p = y == part, scores[:, part].float()
    t['images'] += int(gt.flatten(1).any(1).sum()); t['true_px'] += int(gt.sum()); t['pred_px'] += int((margin > 0).sum())
    if gt.any():
        t['p_sum'] += float(p[gt].sum()); t['p_max'] = max(t['p_max'], float(p[gt].max()))
        t['instead'] += np.bincount(instead[gt].cpu().numpy(), minlength=NUM_CLASSES)
    if (~gt).any(): t['p_max_elsewhere'] = max(t['p_max_elsewhere'], float(p[~gt].max()))
    for k, b in enumerate(t['biases']):
        pred = margin + b > 0
        t['counts'][k] += [int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())]
    return t


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float('nan')


@torch.no_grad()
def probe(checkpoint: Path, part: str, split: str = 'val', data: str | None = None, biases=BIASES, batch_size: int = 8,
          device: str = 'cpu') -> dict:
    "The tally of one checkpoint on `split` of its prepared dataset (or of `data`), run on `device` (a name `resolve_device` reads)."
    device = resolve_device(device)
    model, ckpt = load_for_eval(checkpoint, device)
    ds = FaceParsingDataset(data or ckpt['config']['data_dir'], split)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    t = new_tally(biases)
    for x, y in loader:
        x, y = model_batch(x, y, device)
        tally(t, model_scores(model, x), y, CLASSES.index(part))
    return t


def pooled_prediction(y: torch.Tensor, stride: int) -> torch.Tensor:
    "The label maps (N, H, W) a decoder at 1/`stride` resolution can give back: the log of each class's share of a cell, upsampled bilinearly."
    shares = F.avg_pool2d(F.one_hot(y, NUM_CLASSES).permute(0, 3, 1, 2).float(), stride)
    return F.interpolate(shares.clamp_min(1e-4).log(), scale_factor=stride, mode='bilinear', align_corners=False).argmax(1)


def ceiling(data: str, stride: int, split: str | None = 'val', batch_size: int = 8) -> ConfusionMatrix:
    "The confusion matrix of `pooled_prediction` against the truth on `split` of the prepared dataset `data`."
    cm = ConfusionMatrix()
    for _, y in torch.utils.data.DataLoader(FaceParsingDataset(data, split), batch_size=batch_size):
        y = y.long(); cm.update(pooled_prediction(y, stride), y)
    return cm


def report(name: str, t: dict) -> str:
    "A few Markdown lines about one checkpoint's tally."
    if not t['true_px']: return f"{name}: no pixel of the part in this split; {t['pred_px']} pixels predicted as it (each a false alarm)"
    top = sorted(((CLASSES[i], n / t['true_px']) for i, n in enumerate(t['instead']) if n), key=lambda a: -a[1])[:3]
    lines = [f"{name}: {t['images']} images show it, {t['true_px']} pixels; {t['pred_px']} pixels predicted as it; "
             f"its probability at its pixels mean {t['p_sum'] / t['true_px']:.2g}, max {t['p_max']:.2g} "
             f"(max elsewhere {t['p_max_elsewhere']:.2g}); predicted there instead: "
             + ', '.join(f'{c} {s:.0%}' for c, s in top),
             '| bias on its log-probability | TP | FP | FN | F1 |', '|---|---|---|---|---|']
    lines += [f'| {b:+g} | {tp} | {fp} | {fn} | {f1(tp, fp, fn):.3f} |' for b, (tp, fp, fn) in zip(t['biases'], t['counts'])]
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('checkpoints', nargs='*', type=Path, help='faceseg checkpoints (best.pt)')
    ap.add_argument('--part', default='neck_l', choices=CLASSES[1:], help='the part to probe (default: neck_l, the necklace)')
    ap.add_argument('--split', default='val', help="split of the prepared dataset to probe on (default: val)")
    ap.add_argument('--data', help="prepared dataset to probe on (default: each checkpoint's own)")
    ap.add_argument('--device', default='auto', help="'auto' (a GPU if there is one, else the CPU), 'cpu', 'cuda' or 'cuda:1'")
    ap.add_argument('--ceiling', type=int, metavar='S', help='no checkpoints: score the truth pooled to a 1/S grid on --data instead')
    ap.add_argument('--biases', default=','.join(f'{b:g}' for b in BIASES), help='biases to try, comma-separated')
    a = ap.parse_args(argv)
    if a.ceiling:
        if not a.data: ap.error('--ceiling needs --data, a prepared dataset')
        cm = ceiling(a.data, a.ceiling, a.split); f1s = cm.per_class_f1()
        print(f'truth pooled to 1/{a.ceiling}: {a.part} F1 {f1s[CLASSES.index(a.part)]:.3f}, mean F1 over the parts {cm.mean_f1():.3f}')
        print(' '.join(f'{c} {f:.3f}' for c, f in zip(CLASSES[1:], f1s[1:])))
        return 0
    if not a.checkpoints: ap.error('name checkpoints to probe, or --ceiling S --data DIR')
    biases = tuple(float(b) for b in a.biases.split(','))
    for ck in a.checkpoints:
        print(report(ck.parent.name, probe(ck, a.part, a.split, a.data, biases, device=a.device)), '\n', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
