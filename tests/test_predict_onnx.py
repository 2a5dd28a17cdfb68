"""The ONNX predict path needs no PyTorch: with torch, albumentations, seaborn and smp unimportable, an exported model still parses photos, as it does here."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from faceseg_lib.export import export_onnx
from faceseg_lib.models import create_model, save_checkpoint
from faceseg_lib.predict import predict

SIZE = 64
BLOCKED = ('torch', 'torchvision', 'albumentations', 'seaborn', 'segmentation_models_pytorch', 'timm')

# Run in a fresh interpreter: every package the ONNX path must not need is made unimportable before faceseg_lib loads.
CHILD = textwrap.dedent('''
    import json, sys
    for name in {blocked!r}: sys.modules[name] = None      # `import name` now raises ImportError
    import faceseg_lib
    from faceseg_lib.predict import predict
    from faceseg_lib.cli import main
    model, photo, out = sys.argv[1:4]
    s = predict(model, [photo], out + '/api', detect=False, progress=False, log=lambda m: None)
    rc = main(['predict', model, photo, '--out', out + '/cli', '--no-detect', '--json', '-q'])
    print(json.dumps({{'lib': faceseg_lib.__file__, 'counts': s['counts'], 'backend': s['backend'], 'cli_rc': rc}}))
''').format(blocked=BLOCKED)


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight FPN/mobilenet_v2 model (64 px) exported to ONNX in this process, and a 90x120 photo."""
    torch.set_num_threads(1); torch.manual_seed(0)
    d = tmp_path_factory.mktemp('onnx')
    ckpt = save_checkpoint(d / 'tiny.pt', create_model('FPN', 'mobilenet_v2', None), {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE})
    export_onnx(ckpt, d / 'tiny.onnx', n_check=1)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(d / 'photo.png')
    return d / 'tiny.onnx', d / 'photo.png'


def read_label(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert lab is not None and lab.dtype == np.uint8 and lab.ndim == 2, path
    return lab


def run_child(model: Path, photo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """CHILD in a fresh interpreter that imports this checkout's faceseg_lib, writing under tmp_path/child."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, '-c', CHILD, str(model), str(photo), str(tmp_path / 'child')],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_onnx_predict_runs_without_torch(exported, tmp_path):
    model, photo = exported
    here = predict(model, [photo], tmp_path / 'here', detect=False, progress=False, log=lambda m: None)
    assert here['backend'] == 'onnx' and here['counts']['ok'] == 1
    expected = read_label(tmp_path / 'here' / 'photo.png')
    r = run_child(model, photo, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(got['lib']).resolve().parent == (REPO / 'faceseg_lib').resolve()   # this checkout's library, not another install
    assert got['backend'] == 'onnx' and got['counts'] == {'ok': 1, 'no_face': 0, 'error': 0} and got['cli_rc'] == 0
    for way in ('api', 'cli'):
        lab = read_label(tmp_path / 'child' / way / 'photo.png')
        assert lab.shape == (90, 120) and np.array_equal(lab, expected), way  # the same label map as with torch importable
    assert (tmp_path / 'child' / 'cli' / 'photo.json').is_file() and (tmp_path / 'child' / 'cli' / 'photo_overlay.jpg').is_file()


def test_the_blocking_bites(exported, tmp_path):
    """The same child on the PyTorch checkpoint fails at `import torch`: the blocking works, so the test above can fail."""
    model, photo = exported
    r = run_child(model.with_suffix('.pt'), photo, tmp_path)
    assert r.returncode != 0 and 'import of torch halted' in r.stderr, r.stderr[-3000:]
