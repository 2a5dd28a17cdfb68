"""Builders shared by several test files: fake raw trees, tiny prepared datasets, an independent checkpoint scorer.

Plain functions live here (import them); fixtures built from them live in conftest.py."""
import contextlib
import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from faceseg_lib.celebamask import ANNO_DIR, IMG_DIR, mask_name
from faceseg_lib.dataset import FaceParsingDataset, eval_transform
from faceseg_lib.labels import CLASSES, CLASS_INDEX, NUM_CLASSES, PALETTE
from faceseg_lib.models import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]


def load_script(path: str):
    """A script of the repository that is not a package module (e.g. 'benchmarks/wild.py'), imported by its path."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


C = CLASS_INDEX
SIZE = 64  # side of the synthetic training set (conftest.train_set) and of the models trained on it


# ---------------------------------------------------------------- raw trees in the official layout

M = 32  # mask side in the fake trees; images are 2 * M (like the official 1024 px images with 512 px masks)


def fake_masks(m: int = M) -> dict[str, np.ndarray]:
    """Overlapping 0/255 part masks: hair under hat, neck under cloth, skin under hair, an eye inside the skin."""
    z = lambda: np.zeros((m, m), np.uint8)
    skin, hair, hat, neck, cloth, eye = z(), z(), z(), z(), z(), z()
    skin[4:24, 6:26] = 255
    hair[0:10, 2:30] = 255          # overlaps skin rows 4..9
    hat[0:5, 0:16] = 255            # overlaps hair
    neck[22:m, 10:22] = 255
    cloth[27:m, 0:m] = 255          # overlaps neck rows 27..
    eye[12:14, 10:13] = 255
    return {'skin': skin, 'hair': hair, 'hat': hat, 'neck': neck, 'cloth': cloth, 'l_eye': eye}


def write_raw(root: Path, ids=(0, 1, 2, 2001, 4123), m: int = M, seed: int = 0) -> Path:
    """A tiny raw tree in the official layout: <root>/CelebA-HQ-img/<id>.jpg and the per-part masks of each id."""
    rng = np.random.default_rng(seed)
    (root / IMG_DIR).mkdir(parents=True, exist_ok=True)
    for id in ids:
        cv2.imwrite(str(root / IMG_DIR / f'{id}.jpg'), rng.integers(0, 256, (2 * m, 2 * m, 3), dtype=np.uint8))
        (root / ANNO_DIR / str(id // 2000)).mkdir(parents=True, exist_ok=True)
        for part, mask in fake_masks(m).items():
            cv2.imwrite(str(root / mask_name(id, part)), np.roll(mask, id % 3, axis=1))
    return root


def make_zip(tree: Path, zip_path: Path) -> Path:
    """The tree zipped like the official CelebAMask-HQ.zip: everything under a top folder CelebAMask-HQ/."""
    with zipfile.ZipFile(zip_path, 'w') as zf:
        for p in sorted(tree.rglob('*')):
            zf.write(p, 'CelebAMask-HQ/' + p.relative_to(tree).as_posix())
    return zip_path


# ---------------------------------------------------------------- prepared datasets

def face_label(size=64, shift=0):
    """A face label map with several classes; the subject's left (l_*) lies on the image's right, as in CelebAMask-HQ."""
    s = size / 64
    lab = np.zeros((size, size), np.uint8)
    cv2.ellipse(lab, (int(32 * s), int(36 * s)), (int(18 * s), int(24 * s)), 0, 0, 360, C['skin'], -1)
    lab[: int(14 * s)] = C['hair']
    lab[int(60 * s):, int(20 * s):int(44 * s)] = C['neck']
    lab[int(28 * s):int(40 * s), int(12 * s):int(15 * s)] = C['r_ear']   # image's left
    lab[int(28 * s):int(40 * s), int(49 * s):int(52 * s)] = C['l_ear']   # image's right
    lab[int(22 * s):int(25 * s), int(19 * s):int(29 * s)] = C['r_brow']
    lab[int(22 * s):int(25 * s), int(35 * s):int(45 * s)] = C['l_brow']
    lab[int(28 * s):int(33 * s), int((21 + shift) * s):int((27 + shift) * s)] = C['r_eye']
    lab[int(28 * s):int(33 * s), int((37 + shift) * s):int((43 + shift) * s)] = C['l_eye']
    lab[int(33 * s):int(42 * s), int(30 * s):int(34 * s)] = C['nose']
    lab[int(46 * s):int(48 * s), int(26 * s):int(38 * s)] = C['u_lip']
    lab[int(48 * s):int(50 * s), int(26 * s):int(38 * s)] = C['l_lip']
    return lab


def make_prepared(root, n=6, size=64, splits=('train', 'val', 'test')):
    """Write a tiny dataset in the FIXED prepared layout (images/<id>.jpg, labels/<id>.png, splits.csv, meta.json)."""
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    ids = list(range(10, 10 + n))
    split = [splits[i % len(splits)] for i in range(n)]
    rng = np.random.default_rng(0)
    for k, i in enumerate(ids):
        lab = face_label(size, shift=k % 3)
        img = np.clip(PALETTE[lab].astype(int) + rng.integers(-20, 20, lab.shape + (3,)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'labels' / f'{i}.png'), lab)
        cv2.imwrite(str(root / 'images' / f'{i}.jpg'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    pd.DataFrame({'id': ids, 'split': split}).to_csv(root / 'splits.csv', index=False)
    meta = {'format': 'faceseg-prepared', 'version': 1, 'source': 'tests', 'size': size, 'classes': list(CLASSES),
            'split_method': 'seed', 'counts': {s: split.count(s) for s in ('train', 'val', 'test')},
            'class_pixels': {}, 'class_images': {}, 'skipped': []}
    (root / 'meta.json').write_text(json.dumps(meta))
    return root


# ---------------------------------------------------------------- scoring a checkpoint without the kit's metrics

def evaluate_checkpoint(path, data_dir, split='val'):
    """Confusion counts of a checkpoint on a whole split, one image at a time, computed with numpy (independent of train.py)."""
    model, ckpt = model_from_checkpoint(path)
    ds = FaceParsingDataset(data_dir, split, transform=eval_transform(ckpt['config']['size']))
    m = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            out = model(x[None])[0].numpy()
            if ckpt['model'].get('head') == 'multilabel':  # the most probable part above 0.5, else background
                p = 1 / (1 + np.exp(-np.clip(out, -50, 50)))
                pred = np.where(p.max(0) > 0.5, p.argmax(0) + 1, 0)
            else: pred = out.argmax(0)
            m += np.bincount(NUM_CLASSES * y.numpy().ravel() + pred.ravel(), minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    return m, ckpt


def f1_from_counts(m):
    tp = np.diag(m).astype(float); den = m.sum(0) + m.sum(1)
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)


# ---------------------------------------------------------------- the browser of the app and docs tests

CHROMIUM = os.environ.get('FACESEG_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser') or '/usr/bin/chromium'


@contextlib.contextmanager
def headless_chromium():
    """Headless Chromium (the system's: Playwright downloads no browser here) driven by Playwright; the test calling it
    is skipped, with the reason, where playwright or Chromium is missing."""
    import pytest
    sync_api = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install -e ".[test]")')
    if not Path(CHROMIUM).exists():
        pytest.skip(f'Chromium not found at {CHROMIUM} (apt-get install chromium, or set FACESEG_CHROMIUM)')
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox'])  # root in CI: no sandbox
        try: yield browser
        finally: browser.close()


# ---------------------------------------------------------------- training killed mid-run

def killed_after_first_epoch(fit, config, monkeypatch):
    """Run `fit(config)` as a process killed right after epoch 1's last.pt is on disk (KeyboardInterrupt there)."""
    import faceseg_lib.train as train
    save = train.save_checkpoint
    def save_then_die(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if Path(path).name == 'last.pt': raise KeyboardInterrupt
    monkeypatch.setattr(train, 'save_checkpoint', save_then_die)
    try:
        fit(config)
        raise AssertionError('the run was not killed: it never wrote last.pt')
    except KeyboardInterrupt: pass
    finally: monkeypatch.setattr(train, 'save_checkpoint', save)
