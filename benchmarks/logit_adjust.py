"""Logit adjustment screened on trained runs: how much of dice_bce's class weights to take back at decode.

Each `best.pt` of recipe A's runs 0..FOLDS-1 (trained without adjustment, e.g. `default-bs4`) is decoded on its own
validation fold with the offsets `losses.split_offset` gives for each share (from its fold's training images, as
`fit` computes them), and the pixel counts are summed over the folds, as `recipe_study.py --pooled` scores: one
dataset-level F1 per part over the whole sample. No training: the screen that chose `--logit-adjust`.

For each fold it also picks the share that scores best on the other folds (a nested choice, so no fold is scored with
a share chosen on its own images), and gives the nested choice's pooled gap to recipe B, on the folds B also ran, with
the paired bootstrap interval over images of `recipe_study.bootstrap_gap`:

    python benchmarks/logit_adjust.py --work /tmp/study --runs default-bs4 --against careful-bs4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

SHARES = (0.0, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)


def adjusted_counts(run: Path, shares=SHARES) -> dict[float, np.ndarray]:
    "Per-image pixel counts (images, 19, 19) of a run's best.pt on its own validation fold, decoded with each share's offset."
    import recipe_study as rs
    from faceseg_lib.dataset import label_stats
    from faceseg_lib.losses import split_offset
    from faceseg_lib.models import load_checkpoint
    c = load_checkpoint(run / 'best.pt')['config']
    if c.get('logit_adjust'): sys.exit(f'logit_adjust: {run} was trained with logit_adjust={c["logit_adjust"]}: screen runs trained without it')
    stats = label_stats(c['data_dir'], c.get('train_split', 'train'), progress=False)
    return rs.decoded_counts(run, {s: split_offset(stats, s) for s in shares})


def main(argv=None) -> int:
    import recipe_study as rs
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    p.add_argument('--work', required=True, help="recipe_study.py's --work folder")
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--runs', default='default-bs4', help='the recipe whose best.pt files are decoded (trained without adjustment)')
    p.add_argument('--against', default='careful-bs4', help='the recipe the nested choice is compared with')
    p.add_argument('--init', default='imagenet')
    p.add_argument('--share', type=float, default=0.5, help='print every part\'s pooled F1 at this share beside share 0')
    a = p.parse_args(argv)
    runs = rs.runs_dir(Path(a.work), a.size, a.epochs)
    mine, _ = rs.common_runs(runs, [a.runs], a.init)
    mine = [r for r in mine if r < a.folds]
    if not mine: sys.exit(f'logit_adjust: no run of {a.runs} ({a.init}) finished under {runs}')
    common = [r for r in rs.common_runs(runs, [a.runs, a.against], a.init)[0] if r < a.folds]
    shares = tuple(sorted(set(SHARES) | {a.share}))
    counts = {r: adjusted_counts(runs / f'{a.runs}-{a.init}-r{r}', shares) for r in mine}
    score = lambda folds, s: float(np.nanmean(rs.pooled_f1([counts[r][s].sum(0) for r in folds])[1:]))
    print(f'{a.runs} ({a.init}), runs {", ".join(map(str, mine))}: mean F1 over the 18 parts with a share of the weights taken back\n')
    print('| share | pooled | ' + ' | '.join(f'fold {r}' for r in mine) + ' |\n|---|---|' + '---|' * len(mine))
    for s in shares: print(f'| {s:g} | {score(mine, s):.4f} | ' + ' | '.join(f'{score([r], s):.4f}' for r in mine) + ' |')
    from faceseg_lib.labels import PARTS
    f1 = {s: rs.pooled_f1([counts[r][s].sum(0) for r in mine])[1:] for s in (0.0, a.share)}
    print(f'\n| part | share 0 | share {a.share:g} | change |\n|---|---|---|---|')
    for j, part in enumerate(PARTS): print(f'| {part} | {f1[0.0][j]:.3f} | {f1[a.share][j]:.3f} | {f1[a.share][j] - f1[0.0][j]:+.3f} |')
    if len(mine) < 2: print('\none run: no other folds to choose a share on'); return 0
    chosen = {r: max(shares, key=lambda s: score([k for k in mine if k != r], s)) for r in mine}
    picked = {r: counts[r][chosen[r]] for r in mine}  # each fold decoded with its nested share
    print(f'\nnested choice (the share best on the other folds): {", ".join(f"fold {r}: {s:g}" for r, s in chosen.items())}; '
          f'pooled {np.nanmean(rs.pooled_f1([v.sum(0) for v in picked.values()])[1:]):.4f}')
    if not common: print(f'no run of {a.against} ({a.init}) on these folds: no gap'); return 0
    nested = np.concatenate([picked[r] for r in common])
    theirs = np.concatenate([rs.image_counts(runs / f'{a.against}-{a.init}-r{r}') for r in common])
    gap, lo, hi = rs.bootstrap_gap(nested, theirs)
    print(f'on the folds {a.against} ran ({", ".join(map(str, common))}): nested pooled {np.nanmean(rs.pooled_f1([nested.sum(0)])[1:]):.4f}, {a.against} {np.nanmean(rs.pooled_f1([theirs.sum(0)])[1:]):.4f}, '
          f'gap {gap:+.4f}, 90 % interval over images [{lo:+.4f}, {hi:+.4f}]')
    return 0


if __name__ == '__main__':
    sys.exit(main())
