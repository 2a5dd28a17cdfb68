"""Architecture sweep: a tiny grid runs end to end into tables and plots, reruns skip finished runs, a configuration smp
rejects is recorded while the rest complete, retry_failed reruns only failed ones, and the tables hold metrics.json's numbers."""
import json
import math
import os
import shutil
import time

import pandas as pd
import pytest
import torch
from filelock import FileLock

import faceseg_lib.pipeline as pipeline
from faceseg_lib.compare import RESULT_FILES, collect, f1_table, runs_table
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES
from faceseg_lib.models import count_parameters, model_from_checkpoint
from faceseg_lib.sweep import sweep

SIZE = 64
GRID = ['Unet:mobilenet_v2', 'FPN:mobilenet_v2', 'PAN:mobilenet_v2']  # PAN needs >= 128 px: fails at 64
DONE, FAILED = ['Unet-mobilenet_v2', 'FPN-mobilenet_v2'], 'PAN-mobilenet_v2'
OVERRIDES = dict(encoder_weights=None, max_steps=2, batch_size=2, workers=0)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread here and in the notebook kernels (OMP_NUM_THREADS is inherited): 2 shared cores."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prepare(root):
    from faceseg_lib.prepare import prepare
    from faceseg_lib.synthetic import synthesize
    synthesize(root / 'raw', n=16, seed=0, image_size=128, mask_size=64, workers=1, progress=False)
    prepare(root / 'raw', root / 'prepared', size=SIZE, split='fractions:0.5,0.25,0.25', workers=1, progress=False)


def _run_tiny_sweep(root):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
    t0 = time.time()
    # two CPU 'devices': two configurations at a time, which also exercises the one-thread-per-device pool
    sweep(GRID, root / 'prepared', root / 'sweep', epochs=1, size=SIZE, devices=['cpu', 'cpu'], overrides=OVERRIDES,
          progress=False)
    (root / 'seconds').write_text(f'{time.time() - t0:.1f}')


@pytest.fixture(scope='session')
def swept(tmp_path_factory):
    """The tiny sweep, run once per test session (also under pytest-xdist: the first worker runs it, the others wait).
    Tests that change a sweep work on a copy."""
    if 'PYTEST_XDIST_WORKER' not in os.environ: root = tmp_path_factory.mktemp('faceseg-sweep')
    else: root = tmp_path_factory.getbasetemp().parent / 'faceseg-sweep'  # shared by the xdist workers of this session
    with FileLock(str(root) + '.lock'):
        if not (root / 'seconds').is_file():
            shutil.rmtree(root, ignore_errors=True); root.mkdir()
            _prepare(root); _run_tiny_sweep(root)
    return root


def _copy(swept, tmp_path):
    """A copy of the swept folder (without the .pt files: skipped runs never read them) that a test may change."""
    shutil.copytree(swept / 'sweep', tmp_path / 'sweep', ignore=shutil.ignore_patterns('*.pt'))
    return tmp_path / 'sweep'


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob('*') if p.is_file()}


def _status(run):
    return json.loads((run / 'status.json').read_text())


def test_tiny_grid_completes_with_tables_and_plots(swept):
    out = swept / 'sweep'
    for name in RESULT_FILES: assert (out / name).stat().st_size > 500, name
    runs = runs_table(pd.read_csv(out / 'results.csv'))
    assert list(runs.index) == DONE + [FAILED]
    assert list(runs['status']) == ['done', 'done', 'failed']
    for name in DONE:
        run = out / name
        assert {'02_train.ipynb', 'config.json', 'history.csv', 'best.pt', 'metrics.json', 'status.json'} <= {p.name for p in run.iterdir()}
        assert 'epoch 1/1 ' in (run / '02_train.ipynb').read_text()  # the executed notebook is the run's record
        config = json.loads((run / 'config.json').read_text())
        assert (config['out_dir'], config['name'], config['size'], config['epochs'], config['encoder_weights']) == (str(out), name, SIZE, 1, None)
        measures = _status(run)['measures']
        assert measures['parameters'] == count_parameters(model_from_checkpoint(run / 'best.pt')[0])
        assert measures['train_seconds'] == pytest.approx(pd.read_csv(run / 'history.csv')['seconds'].sum())
        assert measures['images_per_s'] > 0
        assert json.loads((run / 'metrics.json').read_text())['split'] == 'test'


def test_failing_configuration_is_recorded_and_the_rest_complete(swept):
    run = swept / 'sweep' / FAILED
    status = _status(run)
    assert status['status'] == 'failed' and status['attempts'] == 1
    assert "PAN with encoder 'mobilenet_v2' cannot take it" in status['error'] and 'Fix: use a size such as 128' in status['error']
    assert 'DataError' in status['traceback']
    assert (run / '02_train.ipynb').is_file() and not (run / 'best.pt').exists()
    md = (swept / 'sweep' / 'results.md').read_text()
    assert f'- **{FAILED}**: DataError' in md and 'size such as 128' in md


def _md_table(md, header_start):
    """The rows of the Markdown table whose header line starts with `header_start`, as lists of cells."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i:]:
        if not line.startswith('|'): break
        rows.append([c.strip() for c in line.strip('|').split('|')])
    return rows[0], rows[2:]


def test_tables_hold_the_numbers_of_each_runs_metrics_json(swept):
    out = swept / 'sweep'
    csv = pd.read_csv(out / 'results.csv')
    header, rows = _md_table((out / 'results.md').read_text(), '| configuration | background')
    assert header == ['configuration', *CLASSES, 'mean F1', 'micro fscore']
    md = {r[0]: dict(zip(header[1:], r[1:])) for r in rows}
    for name in DONE:
        m = json.loads((out / name / 'metrics.json').read_text())
        expected = {**{c: m['f1'][c] for c in CLASSES}, 'mean F1': m['mean_f1'], 'micro fscore': m['micro_fscore']}
        for col, value in expected.items():
            cell = md[name][col]
            if value is None: assert cell == '–', (name, col)
            else: assert float(cell) == pytest.approx(value, abs=5e-5), (name, col)
        mine = csv[csv['config'] == name].set_index('class')
        for c in CLASSES:
            if m['f1'][c] is None: assert math.isnan(mine.loc[c, 'f1'])
            else: assert mine.loc[c, 'f1'] == pytest.approx(m['f1'][c], rel=1e-12)
        assert mine['mean_f1'].iloc[0] == pytest.approx(m['mean_f1'], rel=1e-12)
        assert mine['micro_fscore'].iloc[0] == pytest.approx(m['micro_fscore'], rel=1e-12)
    assert all(v == '–' for v in md[FAILED].values())
    _, cost = _md_table((out / 'results.md').read_text(), '| configuration | parameters')
    cost = {r[0]: r[1:] for r in cost}
    for name in DONE:
        measures = _status(out / name)['measures']
        assert int(cost[name][0]) == measures['parameters'] and cost[name][3] == 'done'
        assert float(cost[name][1]) == pytest.approx(measures['train_seconds'], abs=0.05)
        assert float(cost[name][2]) == pytest.approx(measures['images_per_s'], abs=0.05)


def _spy(monkeypatch):
    """Record the run folders pipeline.run_notebook is asked to execute (and execute them)."""
    calls, real = [], pipeline.run_notebook
    def spy(name, output, *args, **kwargs):
        calls.append(os.path.basename(os.path.dirname(output))); return real(name, output, *args, **kwargs)
    monkeypatch.setattr(pipeline, 'run_notebook', spy)
    return calls


def test_rerun_skips_finished_and_failed_runs(swept, tmp_path, monkeypatch):
    out = _copy(swept, tmp_path)
    runs = {p: t for p, t in _mtimes(out).items() if p.parent != out}  # the run folders (results.* are rewritten)
    calls = _spy(monkeypatch)
    t0 = time.time()
    df = sweep(GRID, swept / 'prepared', out, epochs=1, size=SIZE, devices=['cpu', 'cpu'], overrides=OVERRIDES, progress=False)
    assert calls == []  # no notebook executed, nothing evaluated
    assert _mtimes(out).items() >= runs.items()  # every file of every run untouched
    assert time.time() - t0 < 10
    assert list(runs_table(df)['status']) == ['done', 'done', 'failed']


def test_retry_failed_reruns_only_failed_ones(swept, tmp_path, monkeypatch):
    out = _copy(swept, tmp_path)
    done = {p: t for p, t in _mtimes(out).items() if p.parent.name in DONE}
    calls = _spy(monkeypatch)
    sweep(GRID, swept / 'prepared', out, epochs=1, size=SIZE, devices='cpu', overrides=OVERRIDES, retry_failed=True, progress=False)
    assert calls == [FAILED]
    status = _status(out / FAILED)
    assert (status['status'], status['attempts']) == ('failed', 2)
    assert _mtimes(out).items() >= done.items()


def test_settings_that_change_results_are_refused_on_rerun(swept, tmp_path):
    out = _copy(swept, tmp_path)
    with pytest.raises(DataError, match=r'sweep\.json: holds a sweep with other settings \(epochs: sweep has 1, now 2'):
        sweep(GRID, swept / 'prepared', out, epochs=2, size=SIZE, devices='cpu', overrides=OVERRIDES, progress=False)


def test_bad_names_and_overrides_fail_before_any_work(swept, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    with pytest.raises(DataError) as e:
        sweep(['Unett:resnet18', 'FPN:resnet35', 'Unet:mobilenet_v2'], swept / 'prepared', tmp_path / 's', epochs=1, size=SIZE)
    assert "unknown architecture 'Unett'" in str(e.value) and "unknown encoder 'resnet35'" in str(e.value)
    with pytest.raises(DataError, match=r"overrides\['bach_size'\]: is not a TrainConfig field"):
        sweep(GRID, swept / 'prepared', tmp_path / 's', epochs=1, size=SIZE, overrides={'bach_size': 2})
    with pytest.raises(DataError, match='config.loss'):
        sweep(GRID, swept / 'prepared', tmp_path / 's', epochs=1, size=SIZE, overrides={'loss': 'dise'})
    with pytest.raises(DataError, match='nowhere: folder not found: this is not a prepared dataset'):
        sweep(GRID, tmp_path / 'nowhere', tmp_path / 's', epochs=1, size=SIZE)
    assert calls == [] and not (tmp_path / 's').exists()


def test_command_line_flags_collect_the_same_results(swept, tmp_path, capsys):
    from faceseg_lib.cli import parse_args
    out = _copy(swept, tmp_path)
    args = parse_args(['sweep', '--collect-only', '--out', str(out), '-q'])
    df = args.func(args)
    assert '2 of 3 configurations done' in capsys.readouterr().out
    pd.testing.assert_frame_equal(f1_table(df), f1_table(collect(swept / 'sweep', write=False)))


NOTEBOOK = 'notebooks/03_compare_archs.ipynb'


def _parameters():
    import ast
    from conftest import REPO
    cells = [c for c in json.loads((REPO / NOTEBOOK).read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    return {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(''.join(cells[0]['source'])).body}


def test_compare_archs_parameters_default_to_the_original_grid_and_train_config():
    from faceseg_lib.sweep import DEFAULT_ARCHS, DEFAULT_ENCODERS
    from faceseg_lib.config import TrainConfig
    p = _parameters()
    assert (tuple(p['archs']), tuple(p['encoders']), p['grid']) == (DEFAULT_ARCHS, DEFAULT_ENCODERS, None)
    for field in ('data_dir', 'epochs', 'size', 'encoder_weights', 'batch_size', 'max_steps'):
        assert p[field] == getattr(TrainConfig, field), field


def test_compare_archs_notebook_shows_the_collected_sweep(swept, tmp_path):
    out = _copy(swept, tmp_path)
    nb = pipeline.run_notebook('03_compare_archs', tmp_path / '03.ipynb', dict(out_dir=str(out), collect_only=True), progress=False)
    text = nb.read_text()
    assert '2 of 3 configurations done' in text and 'image/png' in text and 'PAN-mobilenet_v2' in text
    assert _mtimes(out).keys() >= {out / n for n in RESULT_FILES}
