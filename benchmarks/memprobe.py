"""Child process of the memory benchmark: prepare the first N ids of a raw set in ONE process and print its peak memory.

usage: python benchmarks/memprobe.py RAW OUT SIZE N   (prints one JSON line)"""
import json
import resource
import sys
import tracemalloc


def rss_peak() -> int:
    """Peak resident set size of this process so far, in bytes.

    Linux: VmHWM of /proc/self/status (getrusage's ru_maxrss would start from the parent's peak at fork time)."""
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    except OSError: pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == 'darwin' else r * 1024


def main(raw: str, out: str, size: int, n: int) -> dict:
    import cv2
    import numpy as np
    from faceseg_lib.celebamask import open_raw
    from faceseg_lib.prepare import prepare
    cv2.setNumThreads(1)
    ds = open_raw(raw)
    ids = ds.ids()[:n]
    im = ds.read_image(ids[0]); im.sum()  # touch the decoders once, so their start-up is in the base
    base = rss_peak()
    tracemalloc.start()
    prepare(ds, out, size=size, split='fractions:0.8,0.1,0.1', workers=1, progress=False, ids=ids)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {'n': n, 'rss_base': base, 'rss_peak': rss_peak(), 'rss_growth': max(0, rss_peak() - base),
            'traced_peak': traced, 'image_bytes': int(np.prod(im.shape))}


if __name__ == '__main__':
    raw, out, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(main(raw, out, size, n)))
