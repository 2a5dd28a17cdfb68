"""Sections 1 and 2: preparing (vs naive raw reading), peak memory of prepare, and the training DataLoader (vs decode alone)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench_util import best_time, interleaved, now, row

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- the naive baseline
def naive_read(raw: str, id: int, size: int):
    """Read one face from the raw layout the obvious way: PIL decodes the full-size JPEG, all 18 possible part files
    are tried by name, combined with numpy in PARTS order, then both are resized to `size`."""
    from PIL import Image
    from faceseg_lib.celebamask import ANNO_DIR, IMG_DIR, anno_folder
    from faceseg_lib.labels import CLASS_INDEX, PARTS
    raw = Path(raw)
    img = Image.open(raw / IMG_DIR / f'{id}.jpg').convert('RGB')
    label = None
    for part in PARTS:
        try: m = np.asarray(Image.open(raw / ANNO_DIR / str(anno_folder(id)) / f'{id:05d}_{part}.png').convert('L'))
        except FileNotFoundError: continue
        if label is None: label = np.zeros(m.shape, np.uint8)
        label[m > 127] = CLASS_INDEX[part]
    img = np.asarray(img.resize((size, size), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((size, size), Image.NEAREST))
    return img, label


def _naive_job(job):
    raw, id, size = job
    img, lab = naive_read(raw, id, size)
    return int(lab.sum() % 7)  # keep the result small: the work is what we time


def _single_threaded():
    "Per-core figures: one thread for OpenCV and torch (PIL and numpy decode on one thread anyway)."
    import cv2
    cv2.setNumThreads(1)


def naive_all(raw: Path, ids: list[int], size: int, workers: int) -> None:
    "The naive reading of all `ids`, in this process (workers=1) or a pool of fresh processes (spawned, like prepare's)."
    jobs = [(str(raw), i, size) for i in ids]
    if workers == 1:
        for j in jobs: _naive_job(j)
        return
    with mp.get_context('spawn').Pool(workers, initializer=_single_threaded) as pool:
        list(pool.imap_unordered(_naive_job, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 8)))))


def read_prepared(root: Path, ids: list[int]) -> None:
    "Read prepared pairs the way the training Dataset does (faceseg_lib.dataset.read_image/read_label)."
    from faceseg_lib.dataset import read_image, read_label
    for i in ids:
        read_image(root / 'images' / f'{i}.jpg'); read_label(root / 'labels' / f'{i}.png')


# ---------------------------------------------------------------------------------------------- data sets
def synth_raw(out: Path, n: int, image_size: int, mask_size: int) -> Path:
    from faceseg_lib.synthetic import synthesize
    synthesize(out, n=n, seed=0, image_size=image_size, mask_size=mask_size, progress=False)
    return out


def prepare_to(raw, out: Path, size: int, ids=None, workers: int | None = 1) -> dict:
    from faceseg_lib.prepare import prepare
    shutil.rmtree(out, ignore_errors=True)
    return prepare(raw, out, size=size, split='fractions:0.8,0.1,0.1', workers=workers, progress=False, ids=ids)


def ensure_prepared(ctx: dict) -> Path:
    "The prepared synthetic set of section 1, made now when that section did not run."
    if not ctx.get('prepared'):
        out = ctx['tmp'] / 'prep-synthetic'
        prepare_to(ctx['raw_sets']['synthetic'], out, ctx['args'].prepare_size, workers=None)
        ctx['prepared'] = out
    return ctx['prepared']


def expand_prepared(src: Path, out: Path, n: int, n_val: int = 8) -> Path:
    """A prepared dataset of `n` train + `n_val` val ids whose files are hard links (or copies) of `src`'s files, cycled:
    long epochs from few real images, so loaders are timed past their start-up."""
    shutil.rmtree(out, ignore_errors=True)
    (out / 'images').mkdir(parents=True); (out / 'labels').mkdir()
    have = sorted(int(p.stem) for p in (src / 'labels').glob('*.png'))
    rows = []
    for k in range(n + n_val):
        s = have[k % len(have)]
        for sub, ext in (('images', 'jpg'), ('labels', 'png')):
            a, b = src / sub / f'{s}.{ext}', out / sub / f'{k}.{ext}'
            try: os.link(a, b)
            except OSError: shutil.copy2(a, b)
        rows.append(f"{k},{'train' if k < n else 'val'}\n")
    (out / 'splits.csv').write_text('id,split\n' + ''.join(rows))
    meta = json.loads((src / 'meta.json').read_text())
    meta['counts'] = {'train': n, 'val': n_val, 'test': 0}
    (out / 'meta.json').write_text(json.dumps(meta))
    return out


# ---------------------------------------------------------------------------------------------- section 1: prepare
def bench_prepare(ctx: dict) -> list[dict]:
    "Prepare throughput and prepared reading vs naive raw reading, per core and with all cores, on each raw set."
    from faceseg_lib.celebamask import open_raw
    import faceseg_lib.dataset  # noqa: F401  (imported here, not inside the first timed read)
    a, rows = ctx['args'], []
    size, cores = a.prepare_size, os.cpu_count() or 1
    for name, raw in ctx['raw_sets'].items():
        if raw is None:
            rows.append({'section': 'prepare', 'name': f'{name}: prepare', 'skipped': ctx['raw_notes'][name], 'ratio': None}); continue
        ds = open_raw(raw)
        ids = ds.ids()[:a.images]
        n = len(ids)
        out = ctx['tmp'] / f'prep-{name}'
        _single_threaded()
        # per core: this process alone, alternating naive and prepare so both meet the same disturbances
        t = interleaved({'naive': lambda: naive_all(raw, ids, size, 1),
                         'prepare': lambda: prepare_to(ds, out, size, ids, workers=1)}, a.repeat)
        t_read = best_time(lambda: read_prepared(out, ids), a.repeat)
        per_core_naive = n / t['naive']
        rows.append(row('prepare', f'{name}: prepare, 1 core', n / t['prepare'], 'naive raw read, 1 core', per_core_naive,
                        images=n, size=size, workers=1))
        read_ratio = (n / t_read) / per_core_naive
        rows.append(row('prepare', f'{name}: read prepared, 1 core', n / t_read, 'naive raw read, 1 core', per_core_naive,
                        target='>= 3x', holds=read_ratio >= 3, images=n, size=size, workers=1))
        # all cores: both through a pool of fresh processes (prepare's own pool; the same kind for the naive reading)
        if cores > 1:
            t = interleaved({'naive': lambda: naive_all(raw, ids, size, cores),
                             'prepare': lambda: prepare_to(ds, out, size, ids, workers=cores)}, a.repeat)
            rows.append(row('prepare', f'{name}: prepare, {cores} cores', n / t['prepare'], f'naive raw read, {cores} cores',
                            n / t['naive'], images=n, size=size, workers=cores,
                            note='includes starting the worker processes, as a real run does'))
        if name == 'synthetic': ctx['prepared'] = out  # later sections read these files
    import cv2
    cv2.setNumThreads(-1)  # back to OpenCV's default
    return rows


# ---------------------------------------------------------------------------------------------- memory of prepare
def _probe(raw: Path, out: Path, size: int, n: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(HERE / 'memprobe.py'), str(raw), str(out), str(size), str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0: raise RuntimeError(f'memprobe failed: {r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_memory(ctx: dict) -> list[dict]:
    """Peak memory of prepare (one process) on N and on 4N images: it must not grow with N.

    Measured in a fresh child process each: peak RSS (getrusage) above the RSS after imports and indexing, and the
    peak of traced allocations (tracemalloc: Python objects and numpy arrays) during prepare."""
    a, rows = ctx['args'], []
    for name, raw in ctx['raw_sets'].items():
        if raw is None: continue
        from faceseg_lib.celebamask import open_raw
        total = len(open_raw(raw).ids())
        big = min(total, a.mem_images if name == 'synthetic' else total)
        small = max(1, big // 4)
        if big < 4 * small: continue
        p1 = _probe(raw, ctx['tmp'] / f'mem-{name}-1', a.prepare_size, small)
        p4 = _probe(raw, ctx['tmp'] / f'mem-{name}-4', a.prepare_size, 4 * small)
        per_image = max(0.0, (p4['traced_peak'] - p1['traced_peak']) / (3 * small))
        holds = p4['traced_peak'] <= 1.5 * p1['traced_peak']
        mib = 2 ** 20
        rows.append(row('memory', f'{name}: prepare peak traced, {4 * small} imgs', p4['traced_peak'] / mib,
                        f'same with {small} imgs', p1['traced_peak'] / mib, unit='MiB', target='no growth with N (<= 1.5x at 4x N)',
                        holds=holds, rss_growth_mib={str(small): p1['rss_growth'] / mib, str(4 * small): p4['rss_growth'] / mib},
                        rss_after_imports_mib={str(small): p1['rss_base'] / mib, str(4 * small): p4['rss_base'] / mib},
                        bytes_per_extra_image=per_image, extrapolated_30000_mib=(p1['traced_peak'] + per_image * (30000 - small)) / mib,
                        image_bytes=p1['image_bytes'], size=a.prepare_size))
        rows.append(row('memory', f'{name}: prepare peak RSS of the process, {4 * small} imgs', p4['rss_peak'] / mib,
                        f'same with {small} imgs', p1['rss_peak'] / mib, unit='MiB', target='<= 1.1x at 4x N',
                        holds=p4['rss_peak'] <= 1.1 * p1['rss_peak'], note='whole process: Python, numpy, OpenCV included'))
    return rows


# ---------------------------------------------------------------------------------------------- section 2: loader
class DecodeOnly:
    "The raw decode limit of a prepared dataset: cv2 JPEG + PNG decode, nothing else (uint8 tensors out)."
    def __init__(self, root: Path, ids: list[int]): self.root, self.ids = Path(root), list(ids)
    def __len__(self): return len(self.ids)
    def __getitem__(self, i):
        import cv2, torch
        id = self.ids[i]
        img = cv2.imread(str(self.root / 'images' / f'{id}.jpg'), cv2.IMREAD_COLOR)
        lab = cv2.imread(str(self.root / 'labels' / f'{id}.png'), cv2.IMREAD_UNCHANGED)
        return torch.from_numpy(img), torch.from_numpy(lab)


def loader_rate(dl, epochs: int = 1, device=None) -> float:
    "Images per second over `epochs` passes of `dl` (and onto `device` as the model's input), after one warm-up pass."
    from faceseg_lib.dataset import model_batch
    def one_pass():
        n = 0
        for x, y in dl:
            if device is not None: x, y = model_batch(x, y, device)  # what the training step does with a batch
            n += len(x)
        return n
    one_pass()
    if hasattr(getattr(dl, 'sampler', None), 'set_epoch'): dl.sampler.set_epoch(1)
    t, n = now(), 0
    for _ in range(epochs): n += one_pass()
    if device is not None and getattr(device, 'type', '') == 'cuda':
        import torch; torch.cuda.synchronize()
    return n / (now() - t)


def kit_loader(root: Path, size: int, batch: int, workers: int, device: str = 'cpu'):
    "The training loader `fit` builds (train.make_loaders with the default recipe's augmentation)."
    import torch
    from faceseg_lib.config import TrainConfig
    from faceseg_lib.train import make_loaders, resolved
    c = resolved(TrainConfig(data_dir=str(root), size=size, batch_size=batch, workers=workers, encoder_weights=None))
    train_dl, _ = make_loaders(c, device=torch.device(device))
    return train_dl, c.augmentation


def bench_loader(ctx: dict) -> list[dict]:
    "Training loader images/s (default augmentation) vs cv2 decode alone of the same files, per worker and all cores."
    import cv2, torch
    from torch.utils.data import DataLoader
    a, rows = ctx['args'], []
    src = ensure_prepared(ctx)
    root = expand_prepared(src, ctx['tmp'] / 'loader-set', a.loader_images)
    ids = list(range(a.loader_images))
    from faceseg_lib.core import usable_cores
    cores = usable_cores()  # what make_loaders caps the workers at
    threads = torch.get_num_threads()
    for workers in sorted({0, 1, cores}):
        per_core = workers <= 1
        if per_core: cv2.setNumThreads(1); torch.set_num_threads(1)
        kit, aug = kit_loader(root, a.loader_size, a.batch, workers)
        base = DataLoader(DecodeOnly(root, ids), batch_size=a.batch, num_workers=workers, persistent_workers=workers > 0, shuffle=True)
        r = {}
        for _ in range(a.repeat):  # alternate, keep each one's best
            for k, dl in (('kit', kit), ('decode', base)):
                r[k] = max(r.get(k, 0), loader_rate(dl, a.loader_epochs))
        del kit, base
        label = {0: 'in-process (workers=0)', 1: '1 worker'}.get(workers, f'{workers} workers (all cores)')
        rows.append(row('loader', f"train loader, aug '{aug}', {label}", r['kit'], 'cv2 decode alone, same workers', r['decode'],
                        workers=workers, size=a.loader_size, batch=a.batch, images=a.loader_images,
                        note='1 OpenCV/torch thread' if per_core else 'default threads'))
        cv2.setNumThreads(-1); torch.set_num_threads(threads)
    return rows
