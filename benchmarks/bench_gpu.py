"""Section 5 (CUDA): training images/s and peak memory in plain fp32 vs the kit's defaults, and whether the loader keeps up.

Written to run unattended on a GPU machine: every variant is tried on its own and a failure (no compiler for
torch.compile, out of memory, ...) is recorded in the results instead of stopping the benchmark. `--gpu-device cpu`
runs the same code on the CPU (where AMP and channels_last switch themselves off, so the figures compare nothing):
the test suite does that, so the section's code is exercised on machines without a GPU."""
from __future__ import annotations

import gc
import traceback

from bench_model import _model  # FPN/mobilenet_v2, seeded, as the train section uses
from bench_util import now, row


def _sync(dev):
    "Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing to wait for)."
    import torch
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def _train_rate(variant: str, size: int, batch: int, warmup: int, steps: int, device: str = 'cuda') -> dict:
    "Images/s and peak memory of train.train_epoch on device-resident random batches (no loader: the step's appetite)."
    import torch
    from dataclasses import replace
    from faceseg_lib.config import TrainConfig
    from faceseg_lib.train import resolved, train_epoch, training_setup
    dev = torch.device(device)
    cuda = dev.type == 'cuda'
    c = resolved(TrainConfig(size=size, batch_size=batch, encoder_weights=None, device=device, logit_adjust=0.0))  # no data: no offset (it only changes decoding)
    fp32 = variant == 'fp32'
    if fp32: c = replace(c, amp='off', channels_last=False)  # plain PyTorch: float32, NCHW
    model = _model().to(dev)
    if cuda and c.channels_last: model = model.to(memory_format=torch.channels_last)  # as fit's build_model
    if cuda: torch.backends.cudnn.benchmark = not fp32  # fit turns it on; plain PyTorch leaves it off
    # the kit's setup, as fit uses it (fused AdamW on CUDA); the fp32 baseline: AdamW as it comes (not fused)
    s = training_setup(c, dev, warmup + steps, model=model, fused=False if fp32 else None)
    opt, sched, scaler, loss_fn, dtype, channels_last = s.optimizer, s.scheduler, s.scaler, s.loss_fn, s.dtype, s.channels_last
    net = torch.compile(model) if variant == 'compile' else model
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)  # compact, as the loader gives them
    y = torch.randint(0, 19, (batch, size, size), dtype=torch.uint8, device=dev)
    try:
        _sync(dev)
        if cuda: torch.cuda.reset_peak_memory_stats(dev)
        t0 = now()
        train_epoch(net, [(x, y)] * warmup, opt, sched, scaler, loss_fn, warmup, dev, dtype, channels_last, c.grad_clip)
        _sync(dev)
        warm_s = now() - t0
        t0 = now()
        train_epoch(net, [(x, y)] * steps, opt, sched, scaler, loss_fn, steps, dev, dtype, channels_last, c.grad_clip)
        _sync(dev)
        dt = now() - t0
        return {'img_s': steps * batch / dt, 'peak_mib': torch.cuda.max_memory_allocated(dev) / 2 ** 20 if cuda else None,
                'amp': str(dtype).replace('torch.', '') if dtype else 'off', 'channels_last': channels_last,
                'warmup_s': round(warm_s, 1)}
    finally:
        del net, model, s, opt, sched, x, y
        gc.collect()
        if cuda: torch.cuda.empty_cache()
        try: torch._dynamo.reset()
        except Exception: pass


def bench_gpu(ctx: dict) -> list[dict]:
    import torch
    a = ctx['args']
    device = torch.device(a.gpu_device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('  gpu: skipped: no GPU', flush=True)
        return [{'section': 'gpu', 'name': 'GPU training and loader', 'skipped': 'no GPU', 'ratio': None}]
    size, batch = a.gpu_size, a.gpu_batch
    rows, res = [], {}
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{device.type} (a dry run: figures compare nothing)'
    for variant in ('fp32', 'default', 'compile'):
        if variant == 'compile' and a.no_compile:
            res[variant] = {'error': 'skipped (--no-compile)'}; continue
        try: res[variant] = _train_rate(variant, size, batch, a.gpu_warmup if variant != 'compile' else max(a.gpu_warmup, 3), a.gpu_steps,
                                        str(device))
        except Exception as e:  # e.g. out of memory, or torch.compile without a working compiler
            res[variant] = {'error': f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}'}
            traceback.print_exc()
        print(f'  gpu {variant}: {res[variant]}', flush=True)
    base = res['fp32'].get('img_s')
    for variant, label in (('default', 'kit defaults (AMP, channels_last)'), ('compile', 'kit defaults + torch.compile')):
        r = res[variant]
        if 'error' in r:
            rows.append({'section': 'gpu', 'name': label, 'skipped': r['error'], 'ratio': None}); continue
        rows.append(row('gpu', f'train {label}, {size}px b{batch}', r['img_s'], 'fp32 (no AMP, NCHW)', base,
                        device=name, size=size, batch=batch, peak_mib=r['peak_mib'], amp=r['amp'], warmup_s=r['warmup_s'],
                        fp32_peak_mib=res['fp32'].get('peak_mib'), fp32_error=res['fp32'].get('error')))
        if r['peak_mib'] is not None:  # CUDA's allocator statistics; a CPU dry run has none
            rows.append(row('gpu', f'peak memory {label}', r['peak_mib'], 'fp32', res['fp32'].get('peak_mib'), unit='MiB'))
    speeds = {v: res[v]['img_s'] for v in ('default', 'compile') if 'img_s' in res[v]}
    best = max(speeds, key=speeds.get) if speeds else None
    if best and base:
        rows.append(row('gpu', f'train, best kit setting ({best})', speeds[best], 'fp32 (no AMP, NCHW)', base,
                        target='>= 2x', holds=speeds[best] / base >= 2, compile_helps=speeds.get('compile', 0) > speeds.get('default', 0)))
    # the loader (the kit's default workers, and all the machine's cores) vs what the training step eats
    from faceseg_lib.core import loader_workers, usable_cores
    from faceseg_lib.config import TrainConfig
    cores = usable_cores()  # what make_loaders caps the workers at
    appetite = speeds[best] if best else base
    for workers in sorted({loader_workers(TrainConfig.workers), cores}):
        try:
            from bench_data import ensure_prepared, expand_prepared, kit_loader, loader_rate
            root = expand_prepared(ensure_prepared(ctx), ctx['tmp'] / 'gpu-loader-set', batch * max(8, 2 * cores))
            dl, aug = kit_loader(root, size, batch, workers, device=device.type)
            feed = loader_rate(dl, a.loader_epochs, device=device)
            del dl
            what = 'all cores' if workers == cores else 'kit default workers'
            r = row('gpu', f"loader, {workers} workers ({what}), aug '{aug}', {size}px b{batch}", feed,
                    f'training step appetite ({best or "fp32"})', appetite, target='>= 1x (GPU kept fed)', workers=workers)
            r['holds'] = r['ratio'] is not None and r['ratio'] >= 1
            rows.append(r)
        except Exception as e:
            traceback.print_exc()
            rows.append({'section': 'gpu', 'name': f'loader ({workers} workers) vs training step',
                         'skipped': f'{type(e).__name__}: {e}'[:300], 'ratio': None})
    if device.type != 'cuda':  # a dry run: the code ran, but CPU figures say nothing about the GPU targets
        for r in rows: r.update(name=f'[dry run on {device}] ' + r['name'], target=None, holds=None, dry_run=True)
    return rows
