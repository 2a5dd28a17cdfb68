"""faceseg benchmarks: every figure is a ratio against a baseline measured in the same run on the same files.

    python benchmarks/run.py [--quick] [--only prepare,loader,train,infer,gpu] [--out benchmarks/results.json]

Sections: prepare (and the memory of prepare), loader, train, infer, gpu. See benchmarks/README.md for what each means."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

from bench_util import load_note, machine, table  # noqa: E402  (light: no torch)

SECTIONS = ('prepare', 'loader', 'train', 'infer', 'gpu')
SAMPLE = REPO.parent / 'shared' / 'celebamask-hq-sample'  # ../shared/celebamask-hq-sample from the repo root

# full run: sized to finish in ~10 minutes on 2 cores; --quick: seconds (the test suite runs it)
FULL = dict(images=40, raw_image_size=1024, raw_mask_size=512, prepare_size=512, mem_images=40, repeat=2,
            loader_images=64, loader_size=512, loader_epochs=1, batch=8, train_size=256, train_batch=4, steps_per_round=2, rounds=8,
            infer_sizes=[512], infer_images=8, infer_batch=4, infer_rounds=4, gpu_size=512, gpu_batch=16, gpu_warmup=5, gpu_steps=30)
QUICK = dict(images=8, raw_image_size=128, raw_mask_size=64, prepare_size=64, mem_images=8, repeat=1,
             loader_images=8, loader_size=64, loader_epochs=1, batch=2, train_size=64, train_batch=2, steps_per_round=1, rounds=2,
             infer_sizes=[64], infer_images=2, infer_batch=2, infer_rounds=1, gpu_size=64, gpu_batch=4, gpu_warmup=2, gpu_steps=3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='tiny sizes (seconds): checks that everything runs, figures mean little')
    p.add_argument('--only', default=','.join(SECTIONS), help=f"comma-separated sections among {','.join(SECTIONS)}")
    p.add_argument('--out', type=Path, default=HERE / 'results.json', help='JSON results file')
    p.add_argument('--sample', type=Path, default=SAMPLE, help='real CelebAMask-HQ sample (skipped with a note where absent)')
    p.add_argument('--workdir', type=Path, default=None, help='keep the generated data here (default: a temporary folder)')
    p.add_argument('--infer-checkpoint', type=Path, default=None, help='infer: time this checkpoint (its size must be in --infer-sizes) instead of a random-weight FPN/mobilenet_v2')
    p.add_argument('--infer-data', type=Path, default=None, help="infer: a prepared dataset to time, calibrate int8 on (its train split) and check on (test, else val); default: the section's synthetic set")
    p.add_argument('--no-compile', action='store_true', help='gpu: do not try torch.compile')
    p.add_argument('--gpu-device', default='cuda', help="gpu: the device (e.g. cuda:1); 'cpu' runs the section's code as a dry run")
    for k, v in FULL.items():  # every size can be set; defaults come from FULL or QUICK
        kind = (lambda s: [int(x) for x in s.split(',')]) if isinstance(v, list) else type(v)
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=kind, default=None, help=f'default {v} ({QUICK[k]} with --quick)')
    return p


def parse(argv=None) -> argparse.Namespace:
    a = build_parser().parse_args(argv)
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None: setattr(a, k, v)
    a.only = [s.strip() for s in a.only.split(',') if s.strip()]
    bad = [s for s in a.only if s not in SECTIONS]
    if bad: build_parser().error(f"unknown section(s) {bad}; choose among {', '.join(SECTIONS)}")
    return a


def raw_sets(a: argparse.Namespace, tmp: Path) -> tuple[dict, dict]:
    "The raw datasets measured: synthetic faces at the official sizes, and the real sample where present."
    from bench_data import synth_raw
    sets, notes = {}, {}
    n_synth = max(a.images, a.mem_images)
    t = time.perf_counter()
    sets['synthetic'] = synth_raw(tmp / 'raw-synthetic', n_synth, a.raw_image_size, a.raw_mask_size)
    notes['synthetic'] = f'{n_synth} faces, {a.raw_image_size} px images / {a.raw_mask_size} px masks ({time.perf_counter() - t:.1f}s to make)'
    if (a.sample / 'CelebA-HQ-img').is_dir(): sets['sample'], notes['sample'] = a.sample, f'real sample at {a.sample}'
    else: sets['sample'], notes['sample'] = None, f'skipped: real sample not found at {a.sample}'
    return sets, notes


def run(a: argparse.Namespace) -> dict:
    started = time.perf_counter()
    info = machine()
    results = {'format': 'faceseg-benchmarks', 'version': 1, 'quick': a.quick, 'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
               'command': 'python benchmarks/run.py ' + ' '.join(sys.argv[1:]), 'machine': info,
               'settings': {k: getattr(a, k) for k in FULL}, 'sections': {}, 'rows': []}
    with tempfile.TemporaryDirectory(prefix='faceseg-bench-') as t:
        tmp = Path(a.workdir or t); tmp.mkdir(parents=True, exist_ok=True)
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
        sets, notes = raw_sets(a, tmp)
        results['data'] = notes
        ctx = {'args': a, 'tmp': tmp, 'raw_sets': sets, 'raw_notes': notes}
        from bench_data import bench_loader, bench_memory, bench_prepare
        from bench_model import bench_infer, bench_train
        from bench_gpu import bench_gpu
        plan = {'prepare': [bench_prepare, bench_memory], 'loader': [bench_loader], 'train': [bench_train],
                'infer': [bench_infer], 'gpu': [bench_gpu]}
        for section in a.only:
            t0 = time.perf_counter()
            print(f'[{section}] ...', flush=True)
            rows = []
            for fn in plan[section]:
                try: rows += fn(ctx)
                except Exception as e:  # one broken section must not lose the others' figures
                    traceback.print_exc()
                    rows.append({'section': section, 'name': fn.__name__, 'error': f'{type(e).__name__}: {e}'[:500],
                                 'skipped': f'error: {type(e).__name__}', 'ratio': None})
            results['sections'][section] = {'seconds': round(time.perf_counter() - t0, 1), 'rows': rows}
            results['rows'] += rows
            print(table(rows), flush=True)
    results['wall_seconds'] = round(time.perf_counter() - started, 1)
    results['load_note'] = load_note(info.get('loadavg_start'), info['cpus'] or 1)
    results['targets'] = [{'name': r['name'], 'target': r['target'], 'ratio': r['ratio'], 'holds': r['holds']}
                          for r in results['rows'] if r.get('target') and not r.get('skipped')]
    return results


def main(argv=None) -> int:
    a = parse(argv)
    results = run(a)
    print('\n' + table(results['rows']))
    print(f"\n{results['load_note']}\nwall time {results['wall_seconds']}s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1, default=str) + '\n')
    print(f'wrote {a.out}')
    return 1 if any(r.get('error') for r in results['rows']) else 0


if __name__ == '__main__':
    sys.exit(main())
