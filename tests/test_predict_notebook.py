"""notebooks/05_parse_photos.ipynb runs headless with papermill, and says clearly when there is no checkpoint."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceseg_lib.models import create_model, save_checkpoint
from faceseg_lib.pipeline import run_notebook


@pytest.fixture(scope='module')
def photos(tmp_path_factory, sample_dir):
    """Two real sample faces and a photo without a face."""
    d = tmp_path_factory.mktemp('photos')
    for p in sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[:2]: (d / p.name).write_bytes(p.read_bytes())
    Image.fromarray(np.full((80, 120, 3), 90, np.uint8)).save(d / 'wall.png')
    return d


def test_notebook_parses_photos(tmp_path, photos):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / 'tiny.pt', create_model('FPN', 'mobilenet_v2', None), {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': 64})
    out = tmp_path / 'out'
    run_notebook('05_parse_photos', tmp_path / 'run.ipynb', dict(checkpoint=ckpt, inputs=[str(photos)], out_dir=out), progress=False)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['counts'] == {'ok': 2, 'no_face': 1, 'error': 0}
    assert (out / 'overlays.png').is_file() and (out / 'class_area_share.csv').is_file()
    assert (out / 'aligned_vs_box.png').is_file() and (out / 'video_frames.png').is_file()  # the turned photo, the clip's frames
    video = json.loads((out / 'video' / 'summary.json').read_text())
    assert video['frames'] == 6 and len(list((out / 'video' / 'frames').glob('*.png'))) == 6 and (out / 'video' / 'overlay.mp4').is_file()


def test_notebook_without_checkpoint_says_so(tmp_path):
    """The notebook's first cells, run in this process with a missing checkpoint, stop with a message that says what to do."""
    from conftest import REPO
    from faceseg_lib.errors import DataError
    code = [c for c in json.loads((REPO / 'notebooks' / '05_parse_photos.ipynb').read_text())['cells'] if c['cell_type'] == 'code']
    at = next(i for i, c in enumerate(code) if 'parameters' in c.get('metadata', {}).get('tags', []))  # after the Colab cell
    cells = [''.join(c['source']) for c in code[at:]]
    ns = {}
    exec(cells[0], ns)                                                     # the parameters cell: its defaults work as code
    ns.update(checkpoint=str(tmp_path / 'none.pt'), inputs=[str(tmp_path)], out_dir=str(tmp_path / 'out'))
    with pytest.raises(DataError, match='none.pt: no trained checkpoint here .*faceseg train'):
        exec(cells[1], ns)
    assert not (tmp_path / 'out').exists()
