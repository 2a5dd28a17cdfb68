"""Fit the numbers alignment and box crops rely on, on real CelebA-HQ crops (where the true crop is the whole image).

    python benchmarks/fit_template.py [--sample ../shared/celebamask-hq-sample] [--detector retinaface]

Prints, for the detector: where its five landmarks sit in a CelebA-HQ crop on average (the alignment template, in
units of the crop's side), how far each face's landmarks are from it after the best similarity fit (in inter-ocular
distances), and the box margin/shift that turn its boxes into CelebA-HQ-like square crops. The constants in
`faceseg_lib.detect` (`TEMPLATE`, `RETINA_MARGIN`, `RETINA_SHIFT`) were copied from its output.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faceseg_lib.align import fit_similarity  # noqa: E402
from faceseg_lib.detect import detect_faces  # noqa: E402
from faceseg_lib.predict import read_photo  # noqa: E402


def fit(sample: Path, detector: str = 'retinaface', n: int | None = None) -> dict:
    "The template, the residual of each face against it, and the box margin and shift, from the sample's images."
    files = sorted((sample / 'CelebA-HQ-img').glob('*.jpg'))[:n]
    marks, margins, shifts, missed = [], [], [], 0
    for f in files:
        img = read_photo(f); side = img.shape[0]
        faces = detect_faces(img, detector)
        if not faces: missed += 1; continue
        b = faces[0]; bw, bh = b.x1 - b.x0, b.y1 - b.y0
        margins.append(side / max(bw, bh)); shifts.append(((b.y0 + b.y1) / 2 - side / 2) / bh)
        if b.landmarks is not None: marks.append(np.asarray(b.landmarks) / side)
    out = {'detector': detector, 'images': len(files), 'missed': missed,
           'margin': round(float(np.median(margins)), 3), 'shift': round(float(np.median(shifts)), 3)}
    if marks:
        marks = np.stack(marks); template = marks.mean(0)
        err = []
        for m in marks:  # residual after the best similarity onto the template, in inter-ocular distances
            A = fit_similarity(m, template); moved = m @ A[:, :2].T + A[:, 2]
            err.append(np.linalg.norm(moved - template, axis=1).mean() / np.linalg.norm(template[1] - template[0]))
        out.update(template=np.round(template, 4).tolist(), residual_mean=round(float(np.mean(err)), 4),
                   residual_p95=round(float(np.percentile(err, 95)), 4))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sample', type=Path, default=Path(os.environ.get('FACESEG_SAMPLE', REPO.parent / 'shared' / 'celebamask-hq-sample')))
    ap.add_argument('--detector', default='retinaface')
    ap.add_argument('--n', type=int, default=None, help='first N images only')
    a = ap.parse_args(argv)
    print(json.dumps(fit(a.sample, a.detector, a.n), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
