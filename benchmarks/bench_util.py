"""Small helpers shared by the benchmark sections: timing, result rows, machine facts, the table.

Kept free of heavy imports (no torch): spawned worker processes re-import the main script and its imports."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Iterable


def now() -> float:
    return time.perf_counter()


def best_time(fn: Callable[[], object], repeat: int = 1) -> float:
    "The shortest wall time of `repeat` calls of `fn` (the least disturbed by other processes)."
    best = float('inf')
    for _ in range(max(1, repeat)):
        t = now(); fn(); best = min(best, now() - t)
    return best


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Call each function once per round, alternating A B B A ..., and return each one's best (shortest) round time.

    Alternating spreads slow spells (another process on the machine) over all contenders alike, and the best round
    is the one least disturbed: on a shared machine the median can be several times the undisturbed time."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(1, rounds)):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t = now(); fns[k](); times[k].append(now() - t)
    return {k: min(v) for k, v in times.items()}


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline <= 0: return None
    return value / baseline


def row(section: str, name: str, value: float | None, baseline_name: str, baseline: float | None, unit: str = 'img/s',
        target: str | None = None, holds: bool | None = None, **extra) -> dict:
    "One result: a figure, the baseline measured beside it in the same run, and their ratio."
    r = ratio(value, baseline)
    return {'section': section, 'name': name, 'value': value, 'unit': unit, 'baseline_name': baseline_name,
            'baseline': baseline, 'ratio': r, 'target': target, 'holds': holds, **extra}


def machine() -> dict:
    "What the figures were measured on."
    info = {'cpus': os.cpu_count(), 'platform': platform.platform(), 'python': platform.python_version(),
            'processor': platform.processor() or platform.machine()}
    try: info['loadavg_start'] = [round(x, 2) for x in os.getloadavg()]
    except OSError: pass
    return info


def load_note(load_start: Iterable[float] | None, cpus: int) -> str:
    "A sentence about other processes competing for the cores, from the 1-minute load average."
    try: end = os.getloadavg()[0]
    except OSError: return 'load average unknown'
    start = list(load_start or [end])[0]
    peak = max(start, end)
    busy = 'other processes were competing for the cores' if peak > 1.5 * cpus else 'the machine looked otherwise quiet'
    return f'1-min load average {start:.1f} at start, {end:.1f} at end on {cpus} cores: {busy} (our own work counts too)'


def fmt(v, unit: str = '') -> str:
    if v is None: return '-'
    if isinstance(v, str): return v
    if unit == 'MiB': return f'{v:,.1f}'
    if abs(v) >= 100: return f'{v:,.0f}'
    if abs(v) >= 10: return f'{v:.1f}'
    return f'{v:.2f}'


def table(rows: list[dict]) -> str:
    "The rows as a fixed-width text table."
    head = ('section', 'measure', 'value', 'unit', 'baseline', 'base value', 'ratio', 'target')
    body = []
    for r in rows:
        if r.get('skipped'):
            body.append((r['section'], r['name'], 'skipped', '', r.get('skipped', ''), '', '', r.get('target') or ''))
            continue
        tgt = r.get('target') or ''
        if tgt and r.get('holds') is not None: tgt += ' ' + ('OK' if r['holds'] else 'MISSED')
        body.append((r['section'], r['name'], fmt(r['value'], r.get('unit', '')), r.get('unit', ''), r.get('baseline_name', ''),
                     fmt(r.get('baseline'), r.get('unit', '')), '-' if r.get('ratio') is None else f"{r['ratio']:.2f}x", tgt))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: '  '.join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return '\n'.join([line(head), line(['-' * w for w in widths])] + [line(b) for b in body])
