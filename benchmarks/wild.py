"""Faces in the wild, measured: unaligned photos and videos made from real image/label pairs, with known truth.

Each real CelebA-HQ crop (with its label map) is shrunk, turned by up to --max-angle degrees, and placed at a random
spot of a larger canvas; its labels are moved the same way (pixels the crop does not cover are left out of the
scores). For one checkpoint it reports:

- detection rate (a face found on the crop) for RetinaFace and for dlib's HOG,
- landmark error: RetinaFace's (refined) landmarks on the photo against those it finds on the upright crop, moved
  with the crop, in inter-ocular distances,
- mean F1 over the 18 parts in photo space for: the ceiling (the upright crop itself parsed, its probabilities moved
  with the crop: perfect alignment), box crops (dlib HOG, as predict did before alignment; and RetinaFace's boxes),
  the aligned crop with and without the context pass, and --no-detect on the whole photo;
- for short synthetic videos of a still face and of one turning slowly and drifting (a little sensor noise per
  frame): mean F1 and flicker (the share of face pixels whose label changes between consecutive frames where the
  truth does not), with and without smoothing, and frames per second on the CPU. Two aids to read the flicker of a
  moving face: the same share counted along the face's known motion (the previous frame's labels and truth moved
  with the face before comparing: "motion-compensated"), and a control row, "consistent labelling", which pastes one
  parse of the upright crop with the face's exact motion into every frame. It has no temporal noise at all, so its
  flicker is the floor the edge errors of this checkpoint set: where a predicted edge lies a pixel or two off the true
  one, it sweeps over pixels whose truth stays the same as the face moves. Smoothing can only remove what lies above
  that floor.

    python benchmarks/wild.py --checkpoint outputs/runs/NAME/best.pt [--sample ../shared/celebamask-hq-sample] \\
        [--splits FOLD/splits.csv --split val] [--n 60] [--videos 3 --frames 24] [--smooth 0.6 0.7] [--video-seed 7 --no-photos] \\
        [--out /tmp/wild.json]

`--splits` keeps to the ids a split file lists (e.g. the checkpoint's own validation fold, so no training image is
scored). Every photo and video is drawn from --seed (the clips from --video-seed when given): two runs score the same
pictures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faceseg_lib.align import View, crop_view, paste_view, photo_view  # noqa: E402
from faceseg_lib.celebamask import open_raw  # noqa: E402
from faceseg_lib.detect import detect_faces  # noqa: E402
from faceseg_lib.metrics import ConfusionMatrix  # noqa: E402
from faceseg_lib.predict import load_parser, parse_image  # noqa: E402
from faceseg_lib.video import SMOOTH, VideoParser  # noqa: E402

IGNORE = 255
METHODS = {  # name -> parse_image settings (None: the ceiling, computed from the upright crop)
    'ceiling (upright crop, perfect alignment)': None,
    'box crop, dlib HOG (before this change)': dict(detector='dlib', align=False, context=False),
    'box crop, RetinaFace boxes': dict(detector='retinaface', align=False, context=False),
    'aligned crop, no context pass': dict(detector='retinaface', align=True, context=False),
    'aligned crop + context pass (the default)': dict(detector='retinaface', align=True, context=True),
    '--no-detect (whole photo)': dict(detector=None),
}


def continuous_to_pixels(A: np.ndarray) -> np.ndarray:
    "A 2 x 3 map between continuous coordinates as one between pixel indices (what cv2.warpAffine takes)."
    M = A.astype(np.float64).copy(); M[:, 2] += A[:, :2] @ [0.5, 0.5] - 0.5
    return M


def placement(side: int, canvas: tuple[int, int], angle: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    "2 x 3 continuous map: the crop (side x side) scaled, turned by `angle` degrees (counter-clockwise) and centred at `centre`."
    t = np.deg2rad(angle); c, s = np.cos(t) * scale, np.sin(t) * scale
    R = np.array([[c, s], [-s, c]])
    return np.hstack([R, (np.asarray(centre) - R @ [side / 2, side / 2])[:, None]])


def render(img: np.ndarray, lab: np.ndarray, A: np.ndarray, canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    "The photo (area-averaged first where shrunk) and its truth (IGNORE where the crop does not reach) under placement A."
    H, W = canvas; side = img.shape[0]; scale = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))
    n = max(8, round(side * scale)); k = n / side
    small = cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA) if k < 1 else img
    kk = small.shape[0] / side
    A_small = A @ np.array([[1 / kk, 0, 0], [0, 1 / kk, 0], [0, 0, 1]])  # from the shrunk crop's coordinates
    photo = cv2.warpAffine(small, continuous_to_pixels(A_small), (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    truth = cv2.warpAffine(lab, continuous_to_pixels(A), (W, H), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=IGNORE)
    return photo, truth


def true_view(A: np.ndarray, side: int) -> View:
    "The view of the photo that shows exactly the original crop (the unit square = the crop)."
    inv = cv2.invertAffineTransform(A)
    return View(tuple((inv / side).ravel().tolist()), 'face')


def draw(rng, canvas, max_angle, scale_range, side):
    angle = float(rng.uniform(-max_angle, max_angle))
    scale = float(rng.uniform(*scale_range)) * min(canvas) / side
    centre = (float(rng.uniform(0.35, 0.65) * canvas[1]), float(rng.uniform(0.35, 0.65) * canvas[0]))
    return angle, scale, centre


def ceiling(parser, img, A, shape):
    "Labels of the upright crop parsed as training saw it, moved into the photo with the crop."
    probs = parser(crop_view(img, photo_view(img.shape), parser.size)[None])[0]
    labels = np.zeros(shape, np.uint8); paste_view(probs, true_view(A, img.shape[0]), labels)
    return labels


def nearest_face(faces, centre):
    if not faces: return None
    return min(faces, key=lambda f: (0.5 * (f.x0 + f.x1) - centre[0]) ** 2 + (0.5 * (f.y0 + f.y1) - centre[1]) ** 2)


def found_on_crop(faces, truth) -> bool:
    "Whether a face box's centre lies on the placed crop."
    for f in faces:
        x, y = int(0.5 * (f.x0 + f.x1)), int(0.5 * (f.y0 + f.y1))
        if 0 <= y < truth.shape[0] and 0 <= x < truth.shape[1] and truth[y, x] != IGNORE: return True
    return False


def landmark_error(face, ref, A) -> float | None:
    "Mean distance of the face's landmarks to the reference ones moved by A, in inter-ocular distances of the latter."
    if face is None or face.landmarks is None or ref is None: return None
    moved = np.asarray(ref) @ A[:, :2].T + A[:, 2]
    return float(np.linalg.norm(np.asarray(face.landmarks) - moved, axis=1).mean() / np.linalg.norm(moved[1] - moved[0]))


def photos(parser, raw, ids, rng, a) -> dict:
    "The photo part: detection rate, landmark error, mean F1 per method."
    cms = {m: ConfusionMatrix(ignore_index=IGNORE) for m in METHODS}
    found = {'retinaface': 0, 'dlib': 0}; errs, seconds = [], {m: 0.0 for m in METHODS}
    for i, id in enumerate(ids):
        img, lab = raw.read_image(id), raw.read_label(id)
        if lab.shape != img.shape[:2]: lab = cv2.resize(lab, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        angle, scale, centre = draw(rng, a.canvas, a.max_angle, a.scale, img.shape[0])
        A = placement(img.shape[0], a.canvas, angle, scale, centre)
        photo, truth = render(img, lab, A, a.canvas)
        ref = detect_faces(img, 'retinaface'); ref = ref[0].landmarks if ref else None
        for det in found: found[det] += found_on_crop(detect_faces(photo, det), truth)
        for m, how in METHODS.items():
            t = time.perf_counter()
            if how is None: pred = ceiling(parser, img, A, truth.shape)
            else:
                pred, faces = parse_image(parser, photo, **how)
                if m.startswith('aligned crop + context'): errs.append(landmark_error(nearest_face(faces, centre), ref, A))
            seconds[m] += time.perf_counter() - t
            cms[m].update(pred[None].astype(np.int64), truth[None].astype(np.int64))
        if a.verbose: print(f'  photo {i + 1}/{len(ids)}: id {id}, {angle:+.0f} deg', flush=True)
    e = np.array([x for x in errs if x is not None])
    return {'photos': len(ids), 'detection_rate': {k: v / len(ids) for k, v in found.items()},
            'landmark_error_mean': float(e.mean()) if len(e) else None,
            'landmark_error_p95': float(np.percentile(e, 95)) if len(e) else None,
            'landmarks_scored': int(len(e)),
            'mean_f1': {m: cm.mean_f1() for m, cm in cms.items()},
            'seconds_per_photo': {m: s / len(ids) for m, s in seconds.items()}}


def clip(raw, id, rng, a, turn: float, drift: float) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    "A synthetic clip: the face turning by `turn` degrees and drifting `drift` px over the frames, a little noise per frame; (crop, frames, truths, placements)."
    img, lab = raw.read_image(id), raw.read_label(id)
    if lab.shape != img.shape[:2]: lab = cv2.resize(lab, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    angle, scale, centre = draw(rng, a.canvas, max(0.0, a.max_angle - turn), a.scale, img.shape[0])
    frames, truths, placements = [], [], []
    for t in np.linspace(0, 1, a.frames):
        A = placement(img.shape[0], a.canvas, angle + turn * t, scale, (centre[0] + drift * t, centre[1] + drift / 4 * t))
        photo, truth = render(img, lab, A, a.canvas)
        noisy = np.clip(photo + rng.normal(0, a.noise, photo.shape), 0, 255).astype(np.uint8)
        frames.append(noisy); truths.append(truth); placements.append(A)
    return img, frames, truths, placements


def flicker(preds, truths) -> float:
    "Share of face pixels (truth labelled, not background) whose predicted label changes between frames where the truth does not."
    changed = total = 0
    for p0, p1, t0, t1 in zip(preds, preds[1:], truths, truths[1:]):
        keep = (t0 == t1) & (t1 != IGNORE) & (t1 != 0)
        changed += int((p0 != p1)[keep].sum()); total += int(keep.sum())
    return changed / max(total, 1)


def motion(A0: np.ndarray, A1: np.ndarray) -> np.ndarray:
    "The 2 x 3 continuous map from one frame's canvas to the next's, for a face placed by A0 and then by A1."
    return A1 @ np.vstack([cv2.invertAffineTransform(A0), [0, 0, 1]])


def compensated_flicker(preds, truths, placements) -> float:
    "`flicker` counted along the face's motion: the previous frame's labels and truth moved with the face before comparing."
    changed = total = 0
    for p0, p1, t0, t1, A0, A1 in zip(preds, preds[1:], truths, truths[1:], placements, placements[1:]):
        M, size = continuous_to_pixels(motion(A0, A1)), p1.shape[1::-1]
        moved_p, moved_t = (cv2.warpAffine(x, M, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
                            for x in (p0, t0))
        keep = (moved_t == t1) & (t1 != IGNORE) & (t1 != 0)
        changed += int((moved_p != p1)[keep].sum()); total += int(keep.sum())
    return changed / max(total, 1)


def videos(parser, raw, ids, rng, a) -> dict:
    "The video part, for a still face and a slowly moving one: mean F1, flicker and frames per second, with and without smoothing."
    out = {}
    for kind, turn, drift in (('still', 0.0, 0.0), ('moving', a.turn, a.drift)):
        clips = [clip(raw, id, rng, a, turn, drift) for id in ids]
        for smooth in (None, 0.0, *a.smooth):  # None: the consistent-labelling control
            cm, flick, comp, frames, seconds = ConfusionMatrix(ignore_index=IGNORE), [], [], 0, 0.0
            for img, fr, tr, As in clips:
                t = time.perf_counter()
                if smooth is None: preds = [ceiling(parser, img, A, tr[0].shape) for A in As]
                else: vp = VideoParser(parser, 'retinaface', smooth=smooth); preds = [vp(f) for f in fr]
                seconds += time.perf_counter() - t; frames += len(fr)
                for p, g in zip(preds, tr): cm.update(p[None].astype(np.int64), g[None].astype(np.int64))
                flick.append(flicker(preds, tr)); comp.append(compensated_flicker(preds, tr, As))
            name = f'{kind}, consistent labelling (floor)' if smooth is None else f'{kind}, smooth={smooth:g}'
            out[name] = {'mean_f1': cm.mean_f1(), 'flicker': float(np.mean(flick)), 'compensated_flicker': float(np.mean(comp)),
                         'frames_per_second': None if smooth is None else frames / seconds}
    return {'clips': len(ids), 'frames_per_clip': a.frames, 'noise': a.noise, 'results': out}


def markdown(res: dict) -> str:
    lines = []
    if 'photos' in res:
        p = res['photos']; lines += [
            f"Photos: {p['photos']} (turned up to {res['settings']['max_angle']} degrees), canvas {res['settings']['canvas'][1]}x{res['settings']['canvas'][0]}",
            '', '| measure | value |', '|---|---|',
            f"| detection rate, RetinaFace | {p['detection_rate']['retinaface']:.3f} |",
            f"| detection rate, dlib HOG | {p['detection_rate']['dlib']:.3f} |",
            f"| landmark error (mean / 95th pct, inter-ocular distances) | {p['landmark_error_mean']:.3f} / {p['landmark_error_p95']:.3f} |",
            '', '| method | photo-space mean F1 | s / photo |', '|---|---|---|']
        lines += [f"| {m} | {f1:.3f} | {p['seconds_per_photo'][m]:.3f} |" for m, f1 in p['mean_f1'].items()]
    if res.get('videos'):
        v = res['videos']
        st = res['settings']
        lines += ['', f"Videos: {v['clips']} faces, a clip of {v['frames_per_clip']} frames each, still and moving (turning {st['turn']:g} degrees, "
                  f"drifting {st['drift']:g} px over the clip), noise sigma {v['noise']}",
                  '', '| clip, smoothing | mean F1 | flicker | motion-compensated flicker | frames/s (CPU) |', '|---|---|---|---|---|']
        lines += [f"| {k} | {r['mean_f1']:.3f} | {r['flicker']:.4f} | {r['compensated_flicker']:.4f} | "
                  f"{'-' if r['frames_per_second'] is None else format(r['frames_per_second'], '.1f')} |" for k, r in v['results'].items()]
    return '\n'.join(lines)


def split_ids(path: Path, split: str) -> list[int]:
    with open(path) as f: return sorted(int(r['id']) for r in csv.DictReader(f) if r['split'] == split)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--checkpoint', required=True, help='faceseg checkpoint (.pt) or exported .onnx')
    ap.add_argument('--sample', type=Path, default=Path(os.environ.get('FACESEG_SAMPLE', REPO.parent / 'shared' / 'celebamask-hq-sample')))
    ap.add_argument('--splits', type=Path, help='a splits.csv: keep to the ids of --split in it')
    ap.add_argument('--split', default='val')
    ap.add_argument('--n', type=int, default=60, help='photos')
    ap.add_argument('--videos', type=int, default=3, help='synthetic clips (0: no video part)')
    ap.add_argument('--frames', type=int, default=24, help='frames per clip')
    ap.add_argument('--smooth', type=float, nargs='+', default=[SMOOTH], help="the smoothing(s) measured against none (default: the kit's)")
    ap.add_argument('--video-seed', type=int, help='draw the clips from their own stream with this seed (default: go on from the photos)')
    ap.add_argument('--no-photos', dest='photos', action='store_false', help='only the video part')
    ap.add_argument('--noise', type=float, default=3.0, help='sensor noise per video frame (sigma, grey levels)')
    ap.add_argument('--turn', type=float, default=10.0, help='degrees the face turns over a clip')
    ap.add_argument('--drift', type=float, default=16.0, help='pixels the face moves right over a clip (a quarter of it down)')
    ap.add_argument('--max-angle', type=float, default=45.0)
    ap.add_argument('--scale', type=float, nargs=2, default=(0.45, 0.8), help="crop side as a share of the canvas' short side")
    ap.add_argument('--canvas', type=int, nargs=2, default=(640, 800), metavar=('H', 'W'))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=1, help='torch threads')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--out', type=Path, help='write the results as JSON here')
    ap.add_argument('--verbose', action='store_true')
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    raw = open_raw(a.sample)
    ids = split_ids(a.splits, a.split) if a.splits else raw.ids()
    ids = [i for i in ids if i in set(raw.ids())]
    rng = np.random.default_rng(a.seed)
    pick = sorted(rng.choice(ids, size=min(a.n, len(ids)), replace=False).tolist())
    parser = load_parser(a.checkpoint, device=a.device)
    started = time.time()
    res = {'format': 'faceseg-wild', 'checkpoint': str(a.checkpoint), 'model_size': parser.size,
           'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    if a.photos: res['photos'] = photos(parser, raw, pick, rng, a)
    if a.videos: res['videos'] = videos(parser, raw, pick[:a.videos], rng if a.video_seed is None else np.random.default_rng(a.video_seed), a)
    res['wall_seconds'] = round(time.time() - started, 1)
    print(markdown(res))
    if a.out: a.out.write_text(json.dumps(res, indent=1)); print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
