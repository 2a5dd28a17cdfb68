"""Sections 3 and 4: the kit's training step vs a bare smp + torch loop, and CPU inference (PyTorch eager, ONNX Runtime fp32 and int8, predict)."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from bench_util import best_time, interleaved, now, row

ARCH, ENCODER = 'FPN', 'mobilenet_v2'


def _batches(root: Path, size: int, batch: int, n: int):
    "`n` training batches from the kit's loader (default augmentation), held in memory so no loader is timed."
    from faceseg_lib.dataset import model_batch
    from bench_data import kit_loader
    dl, _ = kit_loader(root, size, batch, workers=0)
    out = []
    while len(out) < n:
        for x, y in dl:
            out.append(model_batch(x, y, 'cpu'))  # compact uint8 batches as the model takes them (both contenders)
            if len(out) == n: break
    return out


def _model(seed: int = 0):
    import torch
    from faceseg_lib.models import create_model
    torch.manual_seed(seed)
    return create_model(ARCH, ENCODER, None)


def bench_train(ctx: dict) -> list[dict]:
    """Images/s of `fit`'s training step (train.train_epoch with the default recipe's optimizer, schedule and loss) vs a
    bare loop (model, loss, backward, optimizer step) on the same model, batches and loss, alternating rounds."""
    import torch
    from faceseg_lib.config import TrainConfig
    from faceseg_lib.train import resolved, train_epoch, training_setup
    from bench_data import ensure_prepared, expand_prepared
    a = ctx['args']
    root = expand_prepared(ensure_prepared(ctx), ctx['tmp'] / 'train-set', max(a.train_batch * 4, 16))
    batches = _batches(root, a.train_size, a.train_batch, a.steps_per_round)
    c = resolved(TrainConfig(data_dir=str(root), size=a.train_size, batch_size=a.train_batch, encoder_weights=None))
    device = torch.device('cpu')
    kit_setup = training_setup(c, device, max(1, a.steps_per_round * a.rounds), model=_model())  # what fit trains with
    loss_fn = kit_setup.loss_fn

    bare_model = _model(); bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    def bare():
        bare_model.train()
        for x, y in batches:
            bare_opt.zero_grad()
            loss = loss_fn(bare_model(x), y)
            loss.backward()
            bare_opt.step()
    def kit():
        s = kit_setup
        train_epoch(s.model, batches, s.optimizer, s.scheduler, s.scaler, s.loss_fn, len(batches), device, s.dtype, s.channels_last, c.grad_clip)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: the overhead ratio does not need more, and one thread does not collapse when shared
    try:
        kit(); bare()  # warm-up (allocator, first-call overheads)
        t = interleaved({'kit': kit, 'bare': bare}, a.rounds)
    finally: torch.set_num_threads(threads)
    n = a.steps_per_round * a.train_batch
    r = row('train', f'fit step (train_epoch), {ARCH}/{ENCODER} {a.train_size}px b{a.train_batch}', n / t['kit'],
            'bare smp + torch loop', n / t['bare'], target='>= 0.95x (within 5%)', size=a.train_size, batch=a.train_batch,
            steps=a.steps_per_round * a.rounds, loss=c.loss, optimizer=c.optimizer, threads=1,
            note=f"1 torch thread; best of {a.rounds} alternating rounds of {a.steps_per_round} steps")
    r['holds'] = r['ratio'] is not None and r['ratio'] >= 0.95
    return [r]


# ---------------------------------------------------------------------------------------------- section 4: inference
def make_checkpoint(path: Path, size: int) -> Path:
    "A faceseg checkpoint of an FPN/mobilenet_v2 (random weights: speed does not depend on them)."
    from faceseg_lib.models import save_checkpoint
    from faceseg_lib.config import TrainConfig
    from faceseg_lib.train import resolved
    c = resolved(TrainConfig(size=size, arch=ARCH, encoder=ENCODER, encoder_weights=None))
    return save_checkpoint(path, _model(), asdict(c))


def _int8(ckpt: Path, path: Path, size: int, src: Path, a) -> dict:
    """`faceseg export --int8` of the benchmark's checkpoint, calibrated on the prepared set (its train split; checked on test or val).

    It measures, it does not gate: the agreement is recorded (random weights agree less than a trained model; --infer-checkpoint)."""
    from faceseg_lib.dataset import load_splits
    from faceseg_lib.export import export_onnx
    splits = set(load_splits(src)['split'])
    images = src if 'train' in splits and splits & {'test', 'val'} else src / 'images'  # a tiny --quick set may lack them
    r = export_onnx(ckpt, path, size=size, check=False, images=images, n_check=max(2, min(8, a.infer_images)), int8=True,
                    n_calib=16, min_int8_agreement=0.0, max_f1_drop=1.0)
    return {**r['int8'], 'weights': 'trained: ' + str(a.infer_checkpoint) if a.infer_checkpoint else 'random'}


def bench_infer(ctx: dict) -> list[dict]:
    "CPU images/s at each size: PyTorch eager vs ONNX Runtime on the same inputs, and predict end to end (--no-detect)."
    import numpy as np
    from faceseg_lib.export import export_onnx
    from faceseg_lib.predict import OnnxParser, TorchParser, normalize_batch, predict
    from faceseg_lib.dataset import read_image
    from bench_data import ensure_prepared
    a, rows = ctx['args'], []
    src = a.infer_data or ensure_prepared(ctx)
    files = sorted((src / 'images').glob('*.jpg'))[:a.infer_images]
    files = (files * (a.infer_images // max(1, len(files)) + 1))[:a.infer_images]
    for size in a.infer_sizes:
        work = ctx['tmp'] / f'infer-{size}'
        shutil.rmtree(work, ignore_errors=True); work.mkdir(parents=True)
        ckpt = Path(a.infer_checkpoint) if a.infer_checkpoint else make_checkpoint(work / 'model.pt', size)
        t0 = now()
        report = export_onnx(ckpt, work / 'model.onnx', size=size, check=True, images=src, n_check=min(4, a.infer_images))
        export_s = now() - t0
        t0 = now()
        q = _int8(ckpt, work / 'model-int8.onnx', size, src, a)
        int8_s = now() - t0
        torch_p, onnx_p, int8_p = (TorchParser(ckpt, device='cpu'), OnnxParser(work / 'model.onnx', device='cpu'),
                                   OnnxParser(work / 'model-int8.onnx', device='cpu'))
        import cv2
        imgs = np.stack([cv2.resize(read_image(f), (size, size), interpolation=cv2.INTER_AREA) for f in files])
        x = normalize_batch(imgs, onnx_p.mean, onnx_p.std)
        b = a.infer_batch
        chunks = [x[i:i + b] for i in range(0, len(x), b)]
        run = {'eager': lambda: [torch_p.logits(c) for c in chunks], 'onnx': lambda: [onnx_p.logits(c) for c in chunks],
               'int8': lambda: [int8_p.logits(c) for c in chunks]}
        for f in run.values(): f()  # warm-up
        t = interleaved(run, a.infer_rounds)
        n = len(x)
        eager, ort, i8 = n / t['eager'], n / t['onnx'], n / t['int8']
        r = row('infer', f'ONNX Runtime, {size}px b{b}', ort, 'PyTorch eager', eager, size=size, batch=b, images=n,
                export_seconds=round(export_s, 1), parity={k: report.get(k) for k in ('agreement', 'max_abs_diff', 'exporter')})
        if size == 512: r.update(target='> 1x at 512 px', holds=r['ratio'] is not None and r['ratio'] > 1)
        rows.append(r)
        r = row('infer', f'ONNX Runtime int8, {size}px b{b}', i8, 'ONNX Runtime fp32', ort, size=size, batch=b, images=n,
                quantize_seconds=round(int8_s, 1), weights=q['weights'], vs_eager=round(i8 / eager, 3),
                int8_check={k: q[k] for k in ('agreement', 'max_f1_drop', 'f1_against', 'images', 'calibration_images')})
        if size == 512: r.update(target='>= 1.5x fp32 at 512 px with >= 99 % argmax agreement',
                                 holds=r['ratio'] is not None and r['ratio'] >= 1.5 and q['agreement'] >= 0.99)
        rows.append(r)
        rows.append(row('infer', f'ONNX Runtime int8 vs eager, {size}px b{b}', i8, 'PyTorch eager', eager, size=size, batch=b, images=n))
        # predict end to end on prepared images: read, crop/resize, model, paste back, write three files per photo
        for backend, model_file, alone in (('torch', ckpt, eager), ('onnx', work / 'model.onnx', ort)):
            out = work / f'pred-{backend}'
            def go(): predict(model_file, [str(f) for f in files], out, detect=False, batch_size=b, device='cpu',
                              backend=backend, overwrite=True, progress=False, log=lambda m: None)
            go()  # warm-up (also loads the model, which each call does again, as the CLI would)
            tp = best_time(go, a.repeat)
            rows.append(row('infer', f'predict --no-detect ({backend}), {size}px', n / tp, f'{backend} model alone', alone,
                            size=size, batch=b, images=n, note='includes loading the model, reading and writing the files'))
    return rows
