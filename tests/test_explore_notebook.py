"""notebooks/01_data_exploration.ipynb runs end to end with papermill on a tiny prepared dataset and writes its figures."""
import cv2
import pandas as pd
import pytest

from conftest import REPO
from helpers import make_prepared

NOTEBOOK = REPO / 'notebooks' / '01_data_exploration.ipynb'
FIGURES = ('split_sizes.png', 'class_share.png', 'mask_areas.png', 'samples.png')


@pytest.mark.slow
@pytest.mark.parametrize('cwd', ['repo', 'notebooks'])
def test_exploration_notebook_writes_figures(tmp_path, cwd):
    papermill = pytest.importorskip('papermill')
    data = make_prepared(tmp_path / 'prep', n=9, size=64)
    out = tmp_path / 'out'
    params = dict(data_dir=str(data), out_dir=str(out), n_samples=3, split='val', seed=1)
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / 'executed.ipynb'), parameters=params,
                               kernel_name='python3', cwd=str(REPO if cwd == 'repo' else NOTEBOOK.parent),
                               progress_bar=False)
    for name in FIGURES:
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, name
    stats = pd.read_csv(out / 'label_stats.csv')
    assert len(stats) == 9 and {'id', 'split', 'l_eye', 'r_eye'} <= set(stats.columns)
    executed = (tmp_path / 'executed.ipynb').read_text()
    assert executed.count('"image/png"') == len(FIGURES)  # each figure shown once in the notebook too


@pytest.mark.slow
def test_exploration_notebook_refuses_an_earlier_folder_and_replaces_it_whole_with_overwrite(tmp_path):
    papermill = pytest.importorskip('papermill')
    data = make_prepared(tmp_path / 'prep', n=9, size=64)
    out = tmp_path / 'out'; out.mkdir(); (out / 'stale.png').write_bytes(b'from an earlier run')
    params = dict(data_dir=str(data), out_dir=str(out), n_samples=3, split='val', seed=1)
    run = lambda **kw: papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / 'executed.ipynb'), parameters={**params, **kw},
                                                  kernel_name='python3', cwd=str(REPO), progress_bar=False)
    with pytest.raises(papermill.PapermillExecutionError, match='holds the results of an earlier run'):
        run()
    assert sorted(p.name for p in out.iterdir()) == ['stale.png'] and sorted(p.name for p in tmp_path.iterdir()) == ['executed.ipynb', 'out', 'prep']
    run(overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(['label_stats.csv', 'class_summary.csv', *FIGURES])
