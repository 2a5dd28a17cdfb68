"""Progress while notebooks run headlessly: the epoch lines reach the terminal while training, bars stay out of the notebook."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import nbformat
import pytest

from conftest import REPO

EPOCHS = 3
EPOCH_LINE = re.compile(r'^epoch (\d+)/(\d+) ')


def _history_rows(run) -> int:
    path = run / 'history.csv'
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


@pytest.mark.slow
def test_demo_prints_one_line_per_epoch_while_it_trains(tmp_path):
    """A tiny `faceseg demo`, its stdout read line by line as it comes: each epoch's line arrives while the run is still
    training (history.csv has that epoch's row and not yet the last one), the kernel draws its epoch bars on the
    terminal (stderr), not into the executed notebook, and neither the kernel's TCP warning nor TqdmWarning shows."""
    out = tmp_path / 'demo'
    args = ['demo', '--out', out, '--n', 10, '--size', 32,  # 32: not the prepared folder test_cli's demo uses
            '--n-samples', 2, '--epochs', EPOCHS, '--max-steps', 3,
            '--batch-size', 2, '--n-examples', 1, '--device', 'cpu', '--workers', 1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'FACESEG_PROGRESS': 'terminal'}  # bars as on a terminal, though piped
    proc = subprocess.Popen([sys.executable, '-m', 'faceseg_lib.cli', *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    run, seen = out / 'runs' / 'demo', []  # (epoch, rows of history.csv when its line arrived, arrival time)
    log = []
    for line in proc.stdout:
        line = line.replace('\x1b[K', '').strip('\r\n')  # text mode reads the wiping '\r' as a line end
        log.append(line)
        if m := EPOCH_LINE.match(line):
            seen.append((int(m[1]), int(m[2]), _history_rows(run), time.time()))
    proc.wait(timeout=600); reader.join(timeout=60)
    stderr = ''.join(err)
    assert proc.returncode == 0, '\n'.join(log) + stderr
    assert [(e, total) for e, total, _, _ in seen] == [(e, EPOCHS) for e in range(1, EPOCHS + 1)], log
    for epoch, _, rows, _ in seen[:-1]:  # printed while it trained: after its own epoch, before the last one
        assert epoch <= rows < EPOCHS, (epoch, rows)
    assert log.index(next(l for l in log if l.startswith('[04_test_and_visualize]'))) > log.index(
        next(l for l in log if l.startswith(f'epoch {EPOCHS}/{EPOCHS}')))
    assert re.search(rf'epoch 1/{EPOCHS}: +\d+%\|', stderr), stderr[-2000:]  # the kernel's per-epoch bar, on the terminal
    assert 'without encryption' not in stderr and 'IProgress not found' not in stderr
    trained = (out / '02_train.ipynb').read_text()
    assert f'epoch 1/{EPOCHS} ' in trained and not re.search(rf'epoch 1/{EPOCHS}: +\d+%', trained)  # the bar is not recorded
    assert 'IProgress not found' not in ''.join(p.read_text() for p in out.glob('*.ipynb'))


def test_jupyterlab_gets_a_widget_bar():
    """In a Jupyter kernel (as JupyterLab starts it: no FACESEG_PROGRESS) the kit's bar is tqdm's ipywidgets bar."""
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'import warnings; warnings.simplefilter("error")\n'
        'from faceseg_lib.core import progress_bar\n'
        'bar = progress_bar(total=2, desc="epoch 1/1"); bar.update(2); bar.close()\n'
        'print(type(bar).__mro__[1].__module__)')])  # tqdm.auto's class derives from the notebook (widget) bar
    env_before = os.environ.pop('FACESEG_PROGRESS', None)
    try:
        NotebookClient(nb, kernel_name='python3', timeout=120, resources={'metadata': {'path': str(REPO)}}).execute()
    finally:
        if env_before is not None: os.environ['FACESEG_PROGRESS'] = env_before
    outputs = nb.cells[0].outputs
    text = ''.join(o.get('text', '') for o in outputs if o['output_type'] == 'stream')
    assert 'tqdm.notebook' in text, outputs
    assert any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outputs), outputs
