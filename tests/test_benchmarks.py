"""The benchmark command runs at tiny sizes and writes well-formed JSON with ratio fields (no timed assertions)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from helpers import load_script

TINY = ['--quick', '--images', '4', '--mem-images', '4', '--loader-images', '4', '--infer-images', '2', '--repeat', '1']


def _run(tmp_path, *args):
    out = tmp_path / 'results.json'
    r = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'run.py'), *TINY, '--out', str(out),
                        '--workdir', str(tmp_path / 'work'), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def _number(x): return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_benchmarks_run_and_write_ratios(tmp_path):
    res, stdout = _run(tmp_path, '--only', 'prepare,loader,train,infer,gpu')
    assert res['format'] == 'faceseg-benchmarks' and res['quick'] is True
    assert set(res['sections']) == {'prepare', 'loader', 'train', 'infer', 'gpu'}
    rows = res['rows']
    assert rows and not [r for r in rows if r.get('error')]
    measured = [r for r in rows if not r.get('skipped')]
    for r in measured:  # every figure comes with its baseline, measured in the same run, and their ratio
        assert _number(r['value']) and _number(r['baseline']) and r['value'] > 0 and r['baseline'] > 0, r
        assert _number(r['ratio']) and abs(r['ratio'] - r['value'] / r['baseline']) < 1e-9, r
    names = ' | '.join(r['name'] for r in measured)
    for part in ('prepare, 1 core', 'read prepared, 1 core', 'prepare peak traced', 'train loader', 'fit step', 'ONNX Runtime',
                 'ONNX Runtime int8', 'int8 vs eager', 'predict --no-detect'):
        assert part in names, (part, names)
    assert {r['section'] for r in measured} >= {'prepare', 'memory', 'loader', 'train', 'infer'}
    for t in res['targets']:
        assert t['target'] and isinstance(t['holds'], bool) and _number(t['ratio'])
    gpu = res['sections']['gpu']['rows']
    import torch
    if not torch.cuda.is_available():
        assert [r['skipped'] for r in gpu] == ['no GPU'] and 'skipped: no GPU' in stdout
    assert _number(res['wall_seconds']) and res['machine']['cpus'] >= 1
    assert 'ratio' in stdout and 'wrote' in stdout  # the table was printed


def test_gpu_section_code_runs_as_a_dry_run_on_the_cpu(tmp_path):
    """The GPU section has no GPU here: run its code on the CPU (no torch.compile: minutes of compiling on 2 cores)."""
    res, stdout = _run(tmp_path, '--only', 'gpu', '--gpu-device', 'cpu', '--no-compile', '--gpu-steps', '2', '--gpu-warmup', '1')
    rows = res['sections']['gpu']['rows']
    assert rows and not [r for r in rows if r.get('error')], rows
    measured = {r['name']: r for r in rows if not r.get('skipped')}
    names = ' | '.join(measured)
    for part in ('train kit defaults (AMP, channels_last)', 'train, best kit setting', 'kit default workers', 'all cores'):
        assert part in names, (part, names)
    for r in measured.values():
        assert r['dry_run'] and r['name'].startswith('[dry run on cpu]') and r['target'] is None, r
        assert _number(r['value']) and _number(r['baseline']) and r['value'] > 0, r
    assert [r['skipped'] for r in rows if r.get('skipped')] == ['skipped (--no-compile)']
    assert res['targets'] == []  # a CPU dry run claims nothing about the GPU targets


def test_unknown_section_is_refused(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'run.py'), '--only', 'warp'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown section' in r.stderr


def test_recipe_study_runs_folds_and_resumes(train_set, tmp_path, capsys):
    """The recipe study on the synthetic raw set: folds are disjoint and cover every id, one run per recipe trains,
    the table is written, and a second call reads the finished runs back instead of training them again."""
    rs = load_script('benchmarks/recipe_study.py')
    folds = rs.folds_of(list(range(10)), 3)
    assert sorted(sum(folds, [])) == list(range(10)) and all(len(set(a) & set(b)) == 0 for a in folds for b in folds if a is not b)
    args = ['--sample', str(train_set.parent / 'raw'), '--work', str(tmp_path), '--size', '64', '--epochs', '1', '--folds', '3',
            '--runs', '1', '--recipes', 'careful,original', '--inits', 'random', '--workers', '0']
    assert rs.main(args) == 0
    md = (tmp_path / 'results-64px-1ep.md').read_text()
    # another model than the study's FPN + mobilenet_v2 keeps its runs and table apart, named after it
    assert rs.runs_dir(tmp_path, 64, 1) == tmp_path / 'runs-64px-1ep' and rs.results_stem(tmp_path, 64, 1) == tmp_path / 'results-64px-1ep'
    assert rs.runs_dir(tmp_path, 64, 1, 'FPN', 'resnet18') == tmp_path / 'runs-64px-1ep-FPN-resnet18'
    assert rs.results_stem(tmp_path, 64, 1, 'Unet', 'mobilenet_v2') == tmp_path / 'results-64px-1ep-Unet-mobilenet_v2'
    assert '| careful | random | 1 |' in md and '| original | random | 1 |' in md
    stamp = (tmp_path / 'runs-64px-1ep' / 'careful-random-r0' / 'best.pt').stat().st_mtime_ns
    assert rs.main(args) == 0 and (tmp_path / 'runs-64px-1ep' / 'careful-random-r0' / 'best.pt').stat().st_mtime_ns == stamp
    rs.RECIPES['careful-seed7'] = dict(preset='careful', seed=7)  # a recipe's own seed wins over the run's
    assert rs.main(args[:-5] + ['careful-seed7', '--inits', 'random', '--workers', '0']) == 0
    assert [json.loads((tmp_path / 'runs-64px-1ep' / f'{n}-random-r0' / 'config.json').read_text())['seed'] for n in ('careful', 'careful-seed7')] == [0, 7]
    del rs.RECIPES['careful-seed7']
    # a recipe measured under FPN's own decoder dropout trains another architecture under that one's own (a Unet has none)
    assert rs.main(args[:-5] + ['default-bs4-adj', '--inits', 'random', '--workers', '0', '--arch', 'Unet']) == 0
    unet = tmp_path / 'runs-64px-1ep-Unet-mobilenet_v2' / 'default-bs4-adj-random-r0' / 'config.json'
    assert rs.RECIPES['default-bs4-adj']['decoder_dropout'] == rs.OWN and json.loads(unet.read_text())['decoder_dropout'] == 0.0
    # the per-part table of two recipes over their common runs: its mean row is the difference of the study's scores
    import pandas as pd
    res = pd.read_csv(tmp_path / 'results-64px-1ep.csv').set_index('recipe')['val_mean_f1']
    parts = rs.part_table(tmp_path / 'runs-64px-1ep', ['careful', 'original'], 'random')
    mean = next(line for line in parts.splitlines() if line.startswith('| mean |')).strip('| ').split(' | ')
    assert parts.startswith('Runs 0 (random)') and '| neck_l |' in parts and len(mean) == 4
    assert abs(float(mean[1]) - res['careful']) < 1e-3 and abs(float(mean[3]) - (res['careful'] - res['original'])) < 1e-3
    from faceseg_lib.labels import PARTS  # the results CSV carries every part's F1, as the per-part table reads it from best.pt
    csv = pd.read_csv(tmp_path / 'results-64px-1ep.csv').set_index('recipe')
    skin = next(line for line in parts.splitlines() if line.startswith('| skin |')).strip('| ').split(' | ')
    assert all(f'f1_{p}' in csv.columns for p in PARTS) and abs(float(skin[1]) - csv.loc['careful', 'f1_skin']) < 1e-3
    assert rs.part_table(tmp_path / 'runs-64px-1ep', ['careful', 'default'], 'random').startswith('no run finished by all')
    # out-of-fold pooling: best.pt re-scored on its own fold gives back the study's score, and the counts of folds add up
    pooled = rs.pooled_table(tmp_path / 'runs-64px-1ep', ['careful', 'original'], 'random', folds=3)
    row = lambda name: next(line for line in pooled.splitlines() if line.startswith(f'| {name} |')).strip('| ').split(' | ')
    assert 'over folds 0 only' in pooled and abs(float(row('**mean (pooled)**')[1].strip('*')) - res['careful']) < 1e-3
    assert abs(float(row("mean of the folds' means")[2]) - res['original']) < 1e-3
    counts = rs.fold_counts(tmp_path / 'runs-64px-1ep' / 'careful-random-r0')  # kept from the table's call in eval-val
    import shutil  # recipe@encoder: the recipe's runs with another encoder, from their own folder (here a copy of the same run)
    shutil.copytree(tmp_path / 'runs-64px-1ep' / 'careful-random-r0', tmp_path / 'runs-64px-1ep-FPN-resnet18' / 'careful-random-r0')
    assert rs.entry_runs(tmp_path / 'runs-64px-1ep', 'careful@resnet18') == (tmp_path / 'runs-64px-1ep-FPN-resnet18', 'careful')
    assert rs.entry_runs(tmp_path / 'runs-64px-1ep-FPN-resnet18', 'careful@mobilenet_v2') == (tmp_path / 'runs-64px-1ep', 'careful')
    twin = rs.pooled_table(tmp_path / 'runs-64px-1ep', ['careful@resnet18', 'careful'], 'random', folds=3)
    assert '| careful@resnet18 | careful |' in twin and twin.splitlines()[-1].endswith('| +0.000 [+0.000, +0.000] |')
    assert (tmp_path / 'runs-64px-1ep' / 'careful-random-r0' / 'eval-val' / 'confusion.csv').is_file()
    assert abs(np.nanmean(rs.pooled_f1([counts])[1:]) - res['careful']) < 1e-6
    # the same pooled scores as a picture: one panel per row, a PNG; a row without '=' is refused by name
    fig = tmp_path / 'fig' / 'study.png'
    assert rs.main(args[:4] + ['--size', '64', '--epochs', '1', '--folds', '3', '--figure', str(fig), '--row', 'random=careful,original']) == 0
    from PIL import Image
    assert Image.open(fig).size[0] > 1000 and capsys.readouterr().out.strip().endswith('study.png')
    with pytest.raises(SystemExit): rs.main(['--work', str(tmp_path), '--figure', str(fig), '--row', 'careful'])
    assert "--row takes INIT=A,B" in capsys.readouterr().err
    from faceseg_lib.labels import CLASSES
    n, neck_l = len(CLASSES), CLASSES.index('neck_l')
    a, b = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
    a[0, 0], a[0, neck_l] = 1000, 10             # a fold without a necklace where 10 background pixels are called necklace
    b[0, 0], b[neck_l, neck_l], b[neck_l, 0] = 1000, 50, 50  # a fold with one, half of it found
    assert rs.pooled_f1([a])[neck_l] == 0 and abs(rs.pooled_f1([b])[neck_l] - 2 / 3) < 1e-9
    assert abs(rs.pooled_f1([a, b])[neck_l] - 100 / 160) < 1e-9 and np.isnan(rs.pooled_f1([a, b])[CLASSES.index('hat')])
    # the paired bootstrap over images: its point is the pooled gap of the table, it is 0 for a model against itself, and
    # one model better on every image has its whole interval above 0
    per_image = rs.image_counts(tmp_path / 'runs-64px-1ep' / 'careful-random-r0')  # adds up to eval-val's counts, or exits
    assert per_image.shape[1:] == (n, n) and np.abs(per_image.sum(0) - counts).sum() <= 2e-5 * counts.sum()  # another process: near-ties may flip
    assert rs.bootstrap_gap(per_image, per_image) == (0.0, 0.0, 0.0)
    gap = row('pooled gap, 90 % interval over images')[-1]
    assert abs(float(gap.split(' ')[0]) - (float(row('**mean (pooled)**')[1].strip('*')) - float(row('**mean (pooled)**')[2].strip('*')))) < 2e-3
    good, bad = np.zeros((40, n, n), np.int64), np.zeros((40, n, n), np.int64)
    good[:, 0, 0] = bad[:, 0, 0] = 1000; good[:, 1, 1] = 100; bad[:, 1, 1], bad[:, 1, 0] = 60, 40  # skin: all found / 60 % found
    good[::2, 2, 2] = bad[::2, 2, 2] = 30  # nose, alike in both
    g, lo, hi = rs.bootstrap_gap(good, bad)
    assert abs(g - (1 - 0.75) / 2) < 1e-9 and 0 < lo <= g <= hi  # skin F1 1 against 0.75, averaged with the nose
    # the logit-adjustment screen: share 0 decodes as the run itself does, and the whole screen runs on the study's folds
    la = load_script('benchmarks/logit_adjust.py')
    adjusted = la.adjusted_counts(tmp_path / 'runs-64px-1ep' / 'careful-random-r0', shares=(0.0, 1.0))
    assert np.array_equal(adjusted[0.0], per_image) and adjusted[1.0].sum() == per_image.sum()
    assert la.main(['--work', str(tmp_path), '--size', '64', '--epochs', '1', '--folds', '3', '--runs', 'careful',
                    '--against', 'original', '--init', 'random']) == 0
    share0 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('| 0 |')).strip('| ').split(' | ')
    assert abs(float(share0[1]) - res['careful']) < 1e-3  # share 0: the study's own score
    assert la.main(['--work', str(tmp_path), '--size', '64', '--epochs', '1', '--folds', '3', '--runs', 'careful',
                    '--against', 'default-bs2', '--init', 'random']) == 0  # a recipe not run beside it: the screen all the same
    assert next(line for line in capsys.readouterr().out.splitlines() if line.startswith('| 0 |')).strip('| ').split(' | ') == share0
    # the original recipe run the original way (plain smp + torch) on the same folds, beside the study's `original` row
    ref = load_script('benchmarks/original_reference.py')
    import torch
    gt = torch.tensor([[1.0, 1.0, 0.0, 0.0]]); pr = torch.tensor([[0.9, 0.2, 0.7, 0.1]])  # tp 1, fp 1, fn 1
    assert abs(ref.fscore(pr, gt) - 0.5) < 1e-6
    ref_args = ['--work', str(tmp_path), '--size', '64', '--epochs', '1', '--runs', '1', '--inits', 'random', '--threads', '1']
    assert ref.main(ref_args) == 0
    rows = json.loads((tmp_path / 'original-reference-64px-1ep.json').read_text())
    assert [(r['init'], r['run'], r['best_epoch']) for r in rows] == [('random', 0, 1)] and 0 <= rows[0]['val_mean_f1'] <= 1
    table = ref.table(rows, tmp_path / 'results-64px-1ep.csv')
    assert '| original, run the original way (this script) | random | 1 |' in table and '| faceseg --preset original | random | 1 |' in table
    assert ref.main(ref_args) == 0 and len(json.loads((tmp_path / 'original-reference-64px-1ep.json').read_text())) == 1  # resumed


def test_dead_part_probe_counts_and_biases(train_set, tmp_path, capsys):
    """The dead-part probe: a part the argmax never picks at its pixels scores TP 0 at bias 0, and a bias that lifts
    its log-probability above the winner's finds it; the probe runs end to end on a checkpoint."""
    dp = load_script('benchmarks/dead_part.py')
    import torch
    nl = dp.CLASSES.index('neck_l')
    y = torch.zeros(1, 2, 3, dtype=torch.int64); y[0, 0, :2] = nl  # 2 necklace pixels, 4 background
    scores = torch.full((1, 19, 2, 3), 1e-3); scores[:, 0] = 0.9
    scores[0, nl, 0, :2] = 0.9 * math.exp(-3)  # 3 below background on the log scale at its own pixels
    t = dp.tally(dp.new_tally((0.0, 4.0)), scores, y, nl)
    assert (t['images'], t['true_px'], t['pred_px']) == (1, 2, 0)
    assert t['counts'].tolist() == [[0, 0, 2], [2, 0, 0]] and t['instead'][0] == 2
    assert abs(dp.f1(*t['counts'][1]) - 1.0) < 1e-9 and math.isnan(dp.f1(0, 0, 0))
    assert '| +4 | 2 | 0 | 0 | 1.000 |' in dp.report('x', t)
    none = dp.tally(dp.new_tally(), scores, torch.zeros_like(y), nl)  # a split without the part: only false alarms count
    assert dp.report('x', none) == 'x: no pixel of the part in this split; 0 pixels predicted as it (each a false alarm)'
    ck = tmp_path / 'run' / 'best.pt'
    from faceseg_lib.train import TrainConfig, fit
    fit(TrainConfig(data_dir=str(train_set), out_dir=str(ck.parent.parent), name='run', size=64, epochs=1, max_steps=1,
                    batch_size=2, encoder_weights=None, workers=0, device='cpu'))
    capsys.readouterr()
    assert dp.main([str(ck), '--part', 'skin', '--biases', '0,2']) == 0
    out = capsys.readouterr().out
    assert out.startswith('run: ') and '| +2 |' in out


def test_dead_part_ceiling_pools_the_truth(train_set, capsys):
    """The resolution ceiling: at stride 1 the pooled truth is the truth; at stride 4 a one-pixel line between cell
    centres is lost while a 4-pixel-wide band is kept; `--ceiling` scores a prepared split without a checkpoint."""
    dp = load_script('benchmarks/dead_part.py')
    import torch
    y = torch.zeros(1, 16, 16, dtype=torch.int64); y[0, :, 5] = 3; y[0, :, 8:12] = 5
    assert torch.equal(dp.pooled_prediction(y, 1), y)
    p = dp.pooled_prediction(y, 4)
    assert not (p == 3).any() and ((p == 5) == (y == 5)).float().mean() > 0.9
    assert dp.main(['--ceiling', '4', '--data', str(train_set), '--split', 'train']) == 0
    out = capsys.readouterr().out
    assert out.startswith('truth pooled to 1/4: neck_l F1') and 'skin ' in out
    assert dp.main(['--ceiling', '1', '--data', str(train_set), '--split', 'train']) == 0
    assert 'mean F1 over the parts 1.000' in capsys.readouterr().out


def test_input_stats_trains_a_study_recipe_on_images_in_minus_one_to_one(train_set, tmp_path, monkeypatch):
    """benchmarks/input_stats.py: the study with mean 0.5 and std 0.5 in place of ImageNet's statistics, as recipe
    default-bs4-adj-half; the statistics it sets are the ones the transforms and the device normaliser use."""
    import faceseg_lib.dataset as D
    for name in ('IMAGENET_MEAN', 'IMAGENET_STD'): monkeypatch.setattr(D, name, getattr(D, name))  # put back after the test
    D._normalizer.cache_clear(); monkeypatch.setattr(D, '_normalizer', D._normalizer)
    ist = load_script('benchmarks/input_stats.py')
    try:
        assert ist.main(['--sample', str(train_set.parent / 'raw'), '--work', str(tmp_path), '--size', '64', '--epochs', '1', '--folds', '3',
                         '--runs', '1', '--recipes', 'default-bs4-adj-half', '--inits', 'random', '--workers', '0']) == 0
        assert D.IMAGENET_MEAN == D.IMAGENET_STD == (0.5, 0.5, 0.5)
        norm = next(t for t in D.eval_transform(64).transforms if type(t).__name__ == 'Normalize')
        assert tuple(norm.mean) == (0.5, 0.5, 0.5)
        import torch
        white = D.normalize_images(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
        assert float(white.max()) == float(white.min()) == 1.0  # 255 -> (1 - 0.5) / 0.5, where ImageNet's statistics give 2.2 to 2.6
        assert '| default-bs4-adj-half | random | 1 |' in (tmp_path / 'results-64px-1ep.md').read_text()
    finally: D._normalizer.cache_clear()


def test_heldout_trains_each_preset_scores_it_on_test_and_resumes(train_set, tmp_path):
    """benchmarks/heldout.py, the issue's table on a held-out split: one run per preset and init plus the original recipe
    run the original way; a run's test score is `faceseg test`'s; a second call trains nothing; a set without a test
    split, an unknown preset and --reference without a weights file are refused with the fix."""
    import pandas as pd
    from faceseg_lib.evaluate import evaluate
    ho = load_script('benchmarks/heldout.py')
    args = ['--data', str(train_set), '--work', str(tmp_path), '--epochs', '1', '--presets', 'careful,default', '--inits', 'random',
            '--workers', '0', '--max-steps', '2', '--reference']
    assert ho.main(args) == 0
    run = tmp_path / 'runs-64px-1ep' / 'default-random-s0'
    csv = pd.read_csv(tmp_path / 'heldout-64px-1ep.csv').set_index('preset')
    assert list(csv.index) == ['reference', 'careful', 'default'] and set(csv['init']) == {'random'}
    for preset in ('careful', 'default'):  # the test score is what `faceseg test` says of best.pt
        ev = evaluate(tmp_path / 'runs-64px-1ep' / f'{preset}-random-s0' / 'best.pt', split='test', out_dir=tmp_path / f'ev-{preset}',
                      workers=0, progress=False)
        assert csv.loc[preset, 'test_mean_f1'] == pytest.approx(ev['mean_f1'], abs=1e-6)
    md = (tmp_path / 'heldout-64px-1ep.md').read_text()
    assert md.startswith('Test mean F1 over the 18 parts (5 test images; trained on 14, best epoch by val on 5)')
    default_row = next(line for line in md.splitlines() if line.startswith('| `--preset default` |'))
    assert f"{csv.loc['default', 'test_mean_f1']:.3f}: under 0.60" in default_row  # the aim from random weights
    gap = next(line for line in md.splitlines() if line.startswith('| random | 0 |')).split(' | ')[2]
    g = float(gap.split(' ')[0])
    assert abs(g - (csv.loc['default', 'test_mean_f1'] - csv.loc['careful', 'test_mean_f1'])) < 2e-3
    hat = next(line for line in md.splitlines() if line.startswith('| hat |'))
    assert hat == '| hat | 0 | – | – | – |'  # no hat in these test faces: no score, not a dead part
    stamp = (run / 'best.pt').stat().st_mtime_ns
    assert ho.main(args) == 0 and (run / 'best.pt').stat().st_mtime_ns == stamp  # resumed: nothing trained again
    assert ho.main(args[:4] + ['--epochs', '1', '--presets', 'default', '--seeds', '1', '--inits', 'random', '--workers', '0', '--max-steps', '2']) == 0
    csv = pd.read_csv(tmp_path / 'heldout-64px-1ep.csv')  # another seed of one preset joins the runs already there
    assert list(zip(csv['preset'], csv['seed'])) == [('reference', 0), ('careful', 0), ('default', 0), ('default', 1)]
    assert '(2 seeds): under 0.60' in (tmp_path / 'heldout-64px-1ep.md').read_text()
    import shutil
    notest = shutil.copytree(train_set, tmp_path / 'notest')  # the same prepared set, its test images moved to train
    (notest / 'splits.csv').write_text((train_set / 'splits.csv').read_text().replace(',test', ',train'))
    for bad, says in ((['--data', str(notest)], 'has no test images'), (args[:2] + ['--presets', 'fast'], "unknown preset(s) ['fast']"),
                      (args[:2] + ['--reference', '--inits', 'imagenet'], 'reads the ImageNet weights from a local file')):
        with pytest.raises(SystemExit) as e: ho.main(bad)
        assert says in str(e.value)


class _Parsed(Exception):
    "Raised by `parse_only` in place of running a script: its arguments parsed."


@pytest.mark.parametrize('doc', ['README.md', 'benchmarks/README.md', 'benchmarks/recipe_study.md'])
def test_every_benchmark_command_in_the_docs_parses(doc, monkeypatch):
    """The study's figures are reproduced by the commands printed beside them: each `python benchmarks/X.py ...` line of
    the docs must still parse as written, and every recipe it names must still be one of recipe_study's RECIPES."""
    import argparse
    import re
    import shlex
    from test_readme import _shell_commands
    real = argparse.ArgumentParser.parse_args
    def parse_only(self, args=None, namespace=None): raise _Parsed(real(self, args, namespace))
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_only)
    rs = load_script('benchmarks/recipe_study.py')
    commands = [c for line in _shell_commands((REPO / doc).read_text()) for c in line.split(' && ') if re.search(r'python benchmarks/\S+\.py', c)]
    assert len(commands) >= (20 if doc.endswith('recipe_study.md') else 1), commands
    for command in commands:
        argv = shlex.split(command)
        k = next(i for i, a in enumerate(argv) if a.startswith('benchmarks/'))
        script = 'benchmarks/recipe_study.py' if argv[k] == 'benchmarks/input_stats.py' else argv[k]  # it passes every argument on
        with pytest.raises(_Parsed) as got: load_script(script).main(argv[k + 1:])
        a, known = vars(got.value.args[0]), set(rs.RECIPES) | {'default-bs4-adj-half'}  # input_stats.py's own recipe
        names = [n for key in ('recipes', 'parts', 'pooled', 'against') if isinstance(a.get(key), str) for n in a[key].split(',')]
        names += [n for row in a.get('row') or [] for n in row.split('=', 1)[-1].split(',')]
        if script.endswith('logit_adjust.py'): names.append(a['runs'])
        unknown = [n for n in names if n.split('@')[0] not in known]
        assert not unknown, f'{doc}: `{command}` names recipes recipe_study.py does not know: {unknown}'
