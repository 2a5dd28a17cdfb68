"""faceseg export: ONNX with a dynamic batch and metadata, a parity check that catches a changed file, and predict --backend onnx."""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import faceseg_lib.predict as P
from faceseg_lib.errors import DataError
from faceseg_lib.export import check_onnx, export_onnx, score_nodes
from faceseg_lib.labels import CLASSES
from faceseg_lib.models import create_model, save_checkpoint

SIZE = 64


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A random-weight FPN/mobilenet_v2 checkpoint (64 px), its ONNX export and the export report."""
    torch.set_num_threads(1); torch.manual_seed(0)
    d = tmp_path_factory.mktemp('export')
    ckpt = save_checkpoint(d / 'tiny.pt', create_model('FPN', 'mobilenet_v2', None), {'arch': 'FPN', 'encoder': 'mobilenet_v2', 'size': SIZE})
    report = export_onnx(ckpt, d / 'tiny.onnx', n_check=4)
    return ckpt, d / 'tiny.onnx', report


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> list[Path]:
    """Three real sample faces when the sample is here, else three synthetic faces (written as JPEG)."""
    from conftest import SAMPLE_DIR
    real = sorted((SAMPLE_DIR / 'CelebA-HQ-img').glob('*.jpg'))[:3]
    if real: return real
    from faceseg_lib.faces import render_face
    d, rng = tmp_path_factory.mktemp('photos'), np.random.default_rng(1)
    paths = [d / f'{i}.jpg' for i in range(3)]
    for p in paths: Image.fromarray(render_face(rng, image_size=256, mask_size=64)[0]).save(p)
    return paths


def test_export_passes_parity_and_carries_metadata(tiny):
    ckpt, path, report = tiny
    assert path.is_file() and report['agreement'] >= 0.999 and report['max_abs_diff'] < 1e-3
    assert report['images'] == 4 and report['batch_sizes'] == [4]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta['format'] == P.ONNX_FORMAT and json.loads(meta['classes']) == list(CLASSES) and meta['size'] == str(SIZE)
    assert len(json.loads(meta['mean'])) == 3 and json.loads(meta['parity'])['agreement'] >= 0.999
    s = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert isinstance(s.get_inputs()[0].shape[0], str)                      # the batch axis is dynamic
    for n in (1, 3):
        assert s.run(None, {'image': np.zeros((n, 3, SIZE, SIZE), np.float32)})[0].shape == (n, len(CLASSES), SIZE, SIZE)


def test_check_runs_on_real_images_and_odd_batches(tiny, photos):
    ckpt, path, _ = tiny
    r = check_onnx(path, ckpt, images=photos, n=3, batch_size=2)
    assert r['images'] == 3 and r['batch_sizes'] == [1, 2] and r['agreement'] >= 0.999


def test_tampered_weights_fail_the_check(tiny, tmp_path):
    ckpt, path, _ = tiny
    m = onnx.load(str(path))
    head = next(t for t in m.graph.initializer if len(t.dims) == 4 and t.dims[0] == len(CLASSES))  # the class head's kernel
    head.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(head), head.name))
    onnx.save(m, str(tmp_path / 'tampered.onnx'))
    with pytest.raises(DataError, match='tampered.onnx: disagrees with .*agreement'):
        check_onnx(tmp_path / 'tampered.onnx', ckpt, n=2)


def test_damaged_or_foreign_onnx_is_refused(tiny, tmp_path):
    ckpt, path, _ = tiny
    (tmp_path / 'cut.onnx').write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match='cut.onnx: cannot be loaded by ONNX Runtime'):
        check_onnx(tmp_path / 'cut.onnx', ckpt, n=1)
    m = onnx.load(str(path)); del m.metadata_props[:]
    onnx.save(m, str(tmp_path / 'plain.onnx'))
    with pytest.raises(DataError, match='plain.onnx: is an ONNX model but not one faceseg exported'):
        P.predict(tmp_path / 'plain.onnx', photo_path(tmp_path), tmp_path / 'out', detect=False, progress=False)


def photo_path(d: Path) -> Path:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / 'x.png')
    return d / 'x.png'


def test_failed_check_leaves_no_file(tiny, tmp_path):
    ckpt, _, _ = tiny
    with pytest.raises(DataError, match='disagrees'):
        export_onnx(ckpt, tmp_path / 'm.onnx', n_check=1, min_agreement=1.01)   # no model can pass this
    assert not list(tmp_path.glob('*.onnx'))


def test_onnx_backend_predicts_like_torch(tiny, photos, tmp_path):
    ckpt, path, _ = tiny
    a = P.predict(ckpt, photos, tmp_path / 'torch', detect=False, progress=False)
    b = P.predict(path, photos, tmp_path / 'onnx', detect=False, backend='onnx', progress=False)
    assert (a['backend'], b['backend']) == ('torch', 'onnx') and b['counts']['ok'] == 3
    for p in photos:
        la, lb = (cv2.imread(str(tmp_path / k / f'{p.stem}.png'), cv2.IMREAD_UNCHANGED) for k in ('torch', 'onnx'))
        assert la.shape == lb.shape and (la == lb).mean() >= 0.999


def test_backend_onnx_wants_the_onnx_file(tiny, tmp_path):
    ckpt, _, _ = tiny
    with pytest.raises(DataError, match='export it first'):
        P.predict(ckpt, photo_path(tmp_path), tmp_path / 'out', backend='onnx', progress=False)


def test_cli_arguments_run_export(tiny, tmp_path, capsys):
    from faceseg_lib.cli import parse_args
    ckpt, _, _ = tiny
    args = parse_args(['export', str(ckpt), str(tmp_path / 'cli.onnx'), '--n-check', '2'])
    r = args.func(args)
    assert (tmp_path / 'cli.onnx').is_file() and r['agreement'] >= 0.999
    assert 'argmax agreement' in capsys.readouterr().out


# --- --int8: static quantisation with ONNX Runtime, held against the fp32 model -------------------------------------

@pytest.fixture(scope='module')
def int8(tiny, train_set, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny checkpoint exported as int8, calibrated on the prepared set's train split, checked on its test split."""
    path = tmp_path_factory.mktemp('int8') / 'tiny8.onnx'
    return path, export_onnx(tiny[0], path, images=train_set, n_check=4, int8=True, min_int8_agreement=0.9)


def test_int8_is_quantised_and_checked_against_fp32_on_held_out_labelled_images(int8, train_set):
    from faceseg_lib.dataset import split_ids
    path, r = int8
    q = r['int8']
    assert q['calibration_images'] == len(split_ids(train_set, 'train')) == 14 and q['images'] == 4 and q['f1_against'] == 'labels'
    assert 0.9 <= q['agreement'] <= 1 and q['max_f1_drop'] <= q['max_f1_drop_allowed'] == 0.02
    assert set(q['f1_change']) == set(CLASSES) and q['f1_change']['background'] is not None
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    softmax = [n for n in m.graph.node if n.name in set(score_nodes(m.graph)) and n.op_type in ('ReduceMax', 'Sub', 'Exp', 'ReduceSum', 'Div')]
    fed = {i for n in m.graph.node if n.op_type == 'QuantizeLinear' for i in n.input}
    assert len(softmax) == 5 and not fed & {o for n in softmax for o in n.output}  # the scores stay float: nothing after the softmax is quantised
    assert r['bytes'] < q['fp32_bytes'] * 0.75  # int8 weights (the encoder stages left in float keep theirs)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta['format'] == P.ONNX_FORMAT and 'int8 static' in meta['quantization'] and json.loads(meta['int8_parity'])['images'] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ['tiny8.onnx']     # no fp32 or temporary files left


def test_int8_below_the_threshold_is_not_written(tiny, train_set, tmp_path):
    path = tmp_path / 'm.onnx'; path.write_bytes(b'the old file')
    with pytest.raises(DataError, match='int8 model strays from fp32: argmax agreement'):
        export_onnx(tiny[0], path, images=train_set, n_check=2, n_calib=4, int8=True, min_int8_agreement=1.01)
    assert path.read_bytes() == b'the old file' and sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx']


def test_int8_predicts_and_the_cli_reports_the_check(int8, tiny, train_set, photos, tmp_path, capsys):
    from faceseg_lib.cli import main
    out = tmp_path / 'cli.onnx'
    assert main(['export', str(tiny[0]), str(out), '--int8', '--images', str(train_set), '--n-check', '2', '--n-calib', '4',
                 '--min-int8-agreement', '0.9']) == 0
    said = capsys.readouterr().out
    assert 'int8: calibrated on 4 images; against fp32 on 2 held-out images: argmax agreement' in said and 'F1 drop' in said
    for model, d in ((int8[0], 'q'), (tiny[1], 'f')):
        P.predict(model, [str(photos[0])], tmp_path / d, detect=False, progress=False, log=lambda m: None)
    a, b = (cv2.imread(str(tmp_path / d / f'{photos[0].stem}.png'), cv2.IMREAD_UNCHANGED) for d in ('q', 'f'))
    assert a.shape == b.shape and (a == b).mean() > 0.9
