"""faceseg app: the Gradio page gives what `faceseg predict` gives on the same photo with the same checkpoint.

The browser test starts `faceseg app` on a free localhost port and drives it in headless Chromium with Playwright:
upload a photo, wait for the result, download the label PNG and compare it with `faceseg predict`, with and without
flip TTA, and save a screenshot. It is skipped (with the reason) where gradio, playwright or Chromium is missing;
`.ci/run` installs them, so CI runs it."""
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceseg_lib.cli import main
from faceseg_lib.detect import resolve_detector
from faceseg_lib.errors import DataError
from faceseg_lib.labels import NUM_CLASSES
from faceseg_lib.predict import area_shares
from faceseg_lib.train import fit
from helpers import SIZE, headless_chromium

REPO = Path(__file__).resolve().parents[1]
needs_gradio = pytest.mark.skipif(importlib.util.find_spec('gradio') is None, reason='gradio is not installed (pip install -e ".[test]")')


@pytest.fixture(scope='module')
def ckpt(train_set, tmp_path_factory) -> Path:
    """A tiny trained checkpoint (Unet/resnet18, random init, 64 px, 2 epochs of 2 steps)."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        run = fit(data_dir=str(train_set), out_dir=str(tmp_path_factory.mktemp('app-runs')), name='tiny', arch='Unet',
                  encoder='resnet18', encoder_weights=None, size=SIZE, epochs=2, max_steps=2, batch_size=4, workers=0)
        return run / 'best.pt'
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope='module')
def photo(tmp_path_factory) -> Path:
    """A synthetic face photo (256 px) that dlib's detector finds, as it finds the faces in any photo."""
    from faceseg_lib.app import example_photos
    folder = tmp_path_factory.mktemp('app-photo')
    return example_photos(folder, n=1, seed=3, size=256)[0].rename(folder / 'photo.jpg')  # not named like the page's examples


def predicted(ckpt, photo, out, *flags) -> np.ndarray:
    """The label map `faceseg predict` writes for `photo`."""
    assert main(['predict', str(ckpt), str(photo), '--out', str(out), '-q', *flags]) == 0
    return cv2.imread(str(out / f'{photo.stem}.png'), cv2.IMREAD_UNCHANGED)


@needs_gradio
def test_page_function_gives_predicts_label_map(ckpt, photo, tmp_path):
    from faceseg_lib.app import page_outputs, parse_photo
    from faceseg_lib.predict import load_parser
    parser = load_parser(ckpt, device='cpu')
    for tta, flags in ((False, []), (True, ['--tta'])):
        got = parse_photo(parser, photo, tmp_path / 'work', tta=tta)
        want = predicted(ckpt, photo, tmp_path / f'cli-{tta}', *flags)
        assert got.status == 'ok' and got.record['faces'] == 1
        assert np.array_equal(got.labels, want) and want.shape == (256, 256) and want.max() < NUM_CLASSES
        overlay, color, legend, rows, labels_file, status = page_outputs(parser, got, dict(detect=True, detector='dlib', tta=tta))
        assert Path(labels_file).read_bytes() == (tmp_path / f'cli-{tta}' / f'{photo.stem}.png').read_bytes()
        assert abs(sum(r[1] for r in rows) - 100) < 0.1 and '1 face(s) found' in status and ('flip TTA' in status) == tta


def test_app_without_gradio_says_how_to_install(monkeypatch):
    from faceseg_lib.app import need_gradio
    monkeypatch.setitem(sys.modules, 'gradio', None)  # import gradio now raises ImportError
    with pytest.raises(DataError, match=r'needs gradio.*pip install -e "\.\[app\]"'):
        need_gradio()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def server(ckpt, tmp_path):
    """`faceseg app CKPT` on a free localhost port, in its own process; its URL once it answers."""
    pytest.importorskip('gradio', reason='gradio is not installed (pip install -e ".[test]")')
    port, log = free_port(), open(tmp_path / 'app.log', 'w')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'faceseg_lib.cli', 'app', str(ckpt), '--port', str(port), '--examples', '2',
                             '--device', 'cpu'], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url, deadline = f'http://127.0.0.1:{port}/', time.time() + 180
    try:
        while True:
            assert proc.poll() is None, f"faceseg app exited: {(tmp_path / 'app.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200: break
            except OSError:
                pass
            assert time.time() < deadline, f"faceseg app did not answer in 180 s: {(tmp_path / 'app.log').read_text()[-3000:]}"
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C, as a user stops it
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()


@pytest.fixture
def browser():
    with headless_chromium() as b: yield b


def parse_in_page(page, tmp_path, name) -> np.ndarray:
    """Wait for the page's result, then download its label PNG; the label map."""
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Parsed with')", timeout=120_000)
    link = page.locator('#labels-file a').first
    link.wait_for(timeout=30_000)
    with page.expect_download(timeout=30_000) as dl:
        link.click()
    dl.value.save_as(tmp_path / name)
    return cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)


def test_browser_upload_gives_predicts_label_map(server, browser, ckpt, photo, tmp_path):
    from faceseg_lib.app import area_rows, example_photos
    want, want_tta = predicted(ckpt, photo, tmp_path / 'cli'), predicted(ckpt, photo, tmp_path / 'cli-tta', '--tta')
    page = browser.new_page(viewport={'width': 1400, 'height': 1100}, accept_downloads=True)
    page.goto(server, wait_until='networkidle', timeout=120_000)
    assert page.title() == 'faceseg: face parsing'
    assert page.locator('#legend .faceseg-class').count() == 19
    page.locator('#photo input[type=file]').set_input_files(str(photo))
    got = parse_in_page(page, tmp_path, 'page.png')
    assert got is not None and np.array_equal(got, want), 'the page and faceseg predict disagree'
    status = page.locator('#status').inner_text()
    assert f"1 face(s) found with {resolve_detector('auto')}" in status and '256 x 256 px' in status
    table = page.locator('#areas').inner_text()
    for name, share in area_rows(area_shares(want)):                         # every class present, with its share
        assert name in table and f'{share:g}' in table, (name, share, table[:500])
    page.screenshot(path=str(tmp_path / 'app.png'), full_page=True)
    if os.environ.get('FACESEG_APP_SCREENSHOT'): shutil.copyfile(tmp_path / 'app.png', os.environ['FACESEG_APP_SCREENSHOT'])

    page.locator('#tta input[type=checkbox]').check()
    page.locator('#parse').click()
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('flip TTA')", timeout=120_000)
    got_tta = parse_in_page(page, tmp_path, 'page-tta.png')
    assert np.array_equal(got_tta, want_tta), 'the page with TTA and faceseg predict --tta disagree'
    assert (tmp_path / 'app.png').stat().st_size > 10_000

    page.locator('img[src*="synthetic-face-0"]').first.click()   # an example face: parsed at once, and downloadable
    page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('512 x 512 px')", timeout=120_000)  # not the 256 px photo
    example = parse_in_page(page, tmp_path, 'example.png')
    drawn = example_photos(tmp_path / 'examples', n=1)[0]          # the same seeded face the app drew for its examples
    assert np.array_equal(example, predicted(ckpt, drawn, tmp_path / 'cli-example', '--tta'))  # TTA is still on
