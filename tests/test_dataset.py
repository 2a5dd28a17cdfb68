"""faceseg_lib.dataset: reading prepared datasets, the left/right-aware flip, augmentation presets and label statistics."""
import json

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from faceseg_lib import dataset as D
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, FLIP_LUT, NUM_CLASSES, PALETTE
from helpers import C, face_label, make_prepared



@pytest.fixture
def prepared(tmp_path):
    return make_prepared(tmp_path / 'prep')


# ---------------------------------------------------------------- flip with left/right swap

def test_flip_swaps_left_and_right_labels_and_flips_image_in_sync():
    lab = face_label(64)
    img = PALETTE[lab]  # colour encodes the (unflipped) label
    assert lab[30, 40] == C['l_eye'] and lab[30, 24] == C['r_eye']
    out = A.Compose([D.HorizontalFlipLR(p=1)])(image=img, mask=lab)
    np.testing.assert_array_equal(out['mask'], FLIP_LUT[np.fliplr(lab)])
    np.testing.assert_array_equal(out['image'], np.fliplr(img))
    # the subject's left eye (l_eye) is again on the image's right; its pixels came from the old right eye
    assert out['mask'][30, 64 - 1 - 24] == C['l_eye'] and out['mask'][30, 64 - 1 - 40] == C['r_eye']
    assert (out['image'][out['mask'] == C['l_eye']] == PALETTE[C['r_eye']]).all()
    for a, b in (('l_brow', 'r_brow'), ('l_ear', 'r_ear'), ('l_eye', 'r_eye')):
        assert (out['mask'] == C[a]).sum() == (lab == C[b]).sum() > 0
    for same in ('u_lip', 'l_lip', 'nose', 'skin'):
        np.testing.assert_array_equal(out['mask'] == C[same], np.fliplr(lab == C[same]))


def test_flip_twice_is_identity_and_keeps_dtype():
    lab = face_label(32)
    flip = A.Compose([D.HorizontalFlipLR(p=1)])
    once = flip(image=PALETTE[lab], mask=lab)
    twice = flip(image=once['image'], mask=once['mask'])
    np.testing.assert_array_equal(twice['mask'], lab)
    np.testing.assert_array_equal(twice['image'], PALETTE[lab])
    assert once['mask'].dtype == np.uint8


def test_swap_lr_leaves_ignore_index_alone():
    np.testing.assert_array_equal(D.swap_lr(np.array([0, 4, 5, 6, 7, 8, 9, 11, 12, 255], np.uint8)),
                                  [0, 5, 4, 7, 6, 9, 8, 11, 12, 255])


@pytest.mark.parametrize('shape', [(), (7,), (5, 6), (5, 6, 2), (2, 5, 6, 2)])
@pytest.mark.parametrize('dtype', [np.uint8, np.int64])
def test_swap_lr_is_the_flip_table_for_every_shape_and_dtype(shape, dtype):
    lab = np.random.default_rng(0).integers(0, NUM_CLASSES, shape).astype(dtype)
    for view in (lab, lab[..., ::-1] if lab.ndim else lab):  # also a reversed view, as a flip hands over
        out = D.swap_lr(view)
        assert out.dtype == dtype and out.shape == view.shape
        np.testing.assert_array_equal(out, FLIP_LUT[view])


# ---------------------------------------------------------------- presets

def test_none_preset_leaves_label_untouched_and_normalises():
    lab = face_label(64)
    img = PALETTE[lab]
    out = D.train_transform(64, 'none')(image=img, mask=lab)
    np.testing.assert_array_equal(out['mask'].numpy(), lab)
    mean, std = np.array(D.IMAGENET_MEAN), np.array(D.IMAGENET_STD)
    np.testing.assert_allclose(out['image'].numpy().transpose(1, 2, 0), (img / 255 - mean) / std, atol=1e-5)
    assert np.abs(D.denormalize(out['image']).astype(int) - img).max() <= 1


def test_resize_to_model_size_keeps_labels_nearest():
    lab = face_label(64)
    out = D.eval_transform(32)(image=PALETTE[lab], mask=lab)
    assert tuple(out['image'].shape) == (3, 32, 32) and tuple(out['mask'].shape) == (32, 32)
    assert set(np.unique(out['mask'].numpy())) <= set(np.unique(lab))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match='none, flip, geometric, strong, default'):
        D.train_transform(64, 'heavy')
    assert set(D.AUGMENTATIONS) >= {'none', 'default'}


def _asymmetric_label(size=64):
    lab = np.zeros((size, size), np.uint8)
    lab[8:56, 10:54] = C['skin']
    lab[4:20, 6:40] = C['hair']          # hair only on the image's left: the layout is not mirror-symmetric
    lab[26:36, 38:50] = C['l_eye']       # image's right
    lab[26:36, 14:26] = C['r_eye']
    lab[40:52, 26:34] = C['nose']
    return lab


@pytest.mark.parametrize('seed', range(8))
def test_default_preset_keeps_image_and_label_aligned(seed):
    """Each label gets its own grey level; after augmentation the grey levels must still sit on their labels."""
    lab = _asymmetric_label()
    code = np.zeros(NUM_CLASSES, np.uint8)
    for name, v in (('skin', 60), ('hair', 110), ('nose', 160), ('l_eye', 205), ('r_eye', 250)):
        code[C[name]] = v
    img = np.repeat(code[lab][..., None], 3, axis=2)
    aug = A.Compose(D.augmentations('default'))
    aug.set_random_seed(seed)
    out = aug(image=img, mask=lab)
    m, grey = out['mask'], out['image'].astype(float).mean(axis=2)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= set(np.unique(lab)) | {0}
    # interiors only: borders see interpolation, blur and the background fill
    interior = {c: cv2.erode((m == c).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) for c in np.unique(m)}
    med = {c: np.median(grey[msk]) for c, msk in interior.items() if msk.sum() >= 10}
    assert len(med) >= 4
    # colour augmentation maps grey levels monotonically: label order by median grey = order of the codes,
    # read with the labels as they are (no flip) or swapped back (flip) -- a desync of image and mask breaks both.
    by_grey = sorted(med, key=med.get)
    assert by_grey in (sorted(med, key=lambda c: code[c]), sorted(med, key=lambda c: code[FLIP_LUT[c]]))
    # and pixel by pixel: decoding each interior pixel to the nearest median gives back its label
    cls = np.array(list(med))
    pix = np.concatenate([np.where(interior[c])[0] * 1000 + np.where(interior[c])[1] for c in cls])
    truth = np.concatenate([np.full(interior[c].sum(), c) for c in cls])
    g = grey[pix // 1000, pix % 1000]
    decoded = cls[np.abs(g[:, None] - np.array([med[c] for c in cls])[None]).argmin(axis=1)]
    assert (decoded == truth).mean() > 0.95


# ---------------------------------------------------------------- reading a prepared dataset

def test_dataset_items(prepared):
    ds = D.FaceParsingDataset(prepared, 'train')
    assert ds.ids == [10, 13] and len(ds) == 2 and ds.meta['size'] == 64
    assert 'split=' in repr(ds) and len(repr(ds)) < 200
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (64, 64) and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), cv2.imread(str(prepared / 'labels/13.png'), cv2.IMREAD_UNCHANGED))
    assert -2.2 < x.min() < 0 < x.max() < 2.7  # ImageNet-normalised, not 0..255 or 0..1
    img, lab = ds.read(1)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3) and lab.dtype == np.uint8
    skin = img[cv2.erode((lab == C['skin']).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)].mean(axis=0)
    rgb, bgr = PALETTE[C['skin']].astype(float), PALETTE[C['skin']][::-1].astype(float)
    assert np.abs(skin - rgb).sum() < np.abs(skin - bgr).sum() / 3  # RGB, not BGR
    np.testing.assert_allclose(D.denormalize(x).astype(int), img, atol=1)


def test_dataset_with_transform_ids_and_all(prepared):
    ds = D.FaceParsingDataset(prepared, 'val', transform=D.train_transform(32, 'default'))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and int(y.max()) < NUM_CLASSES
    assert D.FaceParsingDataset(prepared, ids=[15, 11]).ids == [15, 11]
    assert len(D.FaceParsingDataset(prepared, None)) == 6
    ids, images, labels = D.FaceParsingDataset(prepared, None).sample(4, seed=1)
    assert len(ids) == len(images) == len(labels) == 4 and ids == sorted(ids)
    assert ids == D.FaceParsingDataset(prepared, None).sample(4, seed=1)[0]


def test_dataloader_workers_draw_different_augmentations(prepared):
    ds = D.FaceParsingDataset(prepared, ids=[10] * 4, transform=D.train_transform(64, 'default'))
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    xs = [x for x, _ in loader]
    assert batch[0].shape == (1, 3, 64, 64)
    assert not torch.equal(xs[0], xs[1])  # items 0 and 1 come from different workers



def test_compact_items_become_the_same_model_input_on_the_device(prepared):
    full = D.FaceParsingDataset(prepared, 'train')
    compact = D.FaceParsingDataset(prepared, 'train', transform=D.eval_transform(64, normalize=False))
    (x, y), (cx, cy) = full[1], compact[1]
    assert (cx.dtype, cx.shape, cy.dtype, cy.shape) == (torch.uint8, (3, 64, 64), torch.uint8, (64, 64))
    assert cx.element_size() * cx.numel() * 4 == x.element_size() * x.numel()  # 4x fewer bytes through the loader
    bx, by = D.model_batch(cx[None], cy[None], 'cpu')
    assert bx.dtype == torch.float32 and by.dtype == torch.int64
    torch.testing.assert_close(bx[0], x, atol=1e-5, rtol=0)  # normalising a batch == albumentations' Normalize per item
    assert torch.equal(by[0], y)
    np.testing.assert_array_equal(D.denormalize(cx), D.denormalize(x))  # both show as the same uint8 picture
    fx, fy = D.model_batch(x[None], y[None], 'cpu', channels_last=True)  # float batches only move (and change layout)
    assert torch.equal(fx, x[None]) and fx.is_contiguous(memory_format=torch.channels_last) and fy.dtype == torch.int64


def test_compact_training_items_keep_the_flip_label_swap(prepared):
    t = D.train_transform(64, 'flip', normalize=False)
    t.set_random_seed(0)
    ds = D.FaceParsingDataset(prepared, ids=[10] * 8, transform=t)
    img, lab = ds.read(0)
    flipped = [y for x, y in (ds[i] for i in range(8)) if not torch.equal(y, torch.from_numpy(lab))]
    assert flipped, 'p=0.5 over 8 draws: some flip'
    np.testing.assert_array_equal(flipped[0].numpy(), FLIP_LUT[np.fliplr(lab)])


@pytest.mark.parametrize('missing', ['meta.json', 'splits.csv', 'images', 'labels'])
def test_not_a_prepared_dataset_names_the_file_and_fix(prepared, missing):
    import shutil
    p = prepared / missing
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(DataError) as e:
        D.FaceParsingDataset(prepared)
    assert str(p) in str(e.value) and 'Fix:' in str(e.value) and 'faceseg prepare' in str(e.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match='Fix:.*faceseg prepare'):
        D.load_meta(tmp_path / 'nope')


def test_bad_meta_and_splits(prepared):
    (prepared / 'meta.json').write_text('{not json')
    with pytest.raises(DataError, match=r'meta\.json: not valid JSON.*Fix:'):
        D.load_meta(prepared)
    (prepared / 'meta.json').write_text(json.dumps({'format': 'something-else'}))
    with pytest.raises(DataError, match='faceseg-prepared'):
        D.load_meta(prepared)
    (prepared / 'splits.csv').write_text('id,split\n1,train\n2,holdout\n')
    with pytest.raises(DataError, match=r'splits\.csv: unknown split name\(s\) holdout.*Fix:'):
        D.load_splits(prepared)
    (prepared / 'splits.csv').write_text('image,set\n1,train\n')
    with pytest.raises(DataError, match='not id,split'):
        D.load_splits(prepared)


def test_unknown_and_empty_split(tmp_path):
    root = make_prepared(tmp_path / 'p', n=2, splits=('train', 'val'))
    with pytest.raises(DataError, match="unknown split. Fix: use one of train, val, test"):
        D.FaceParsingDataset(root, 'validation')
    with pytest.raises(DataError) as e:
        D.FaceParsingDataset(root, 'test')
    assert str(root / 'splits.csv') in str(e.value) and "'test' split has no images" in str(e.value)


def test_missing_or_corrupt_files_name_the_file(prepared):
    ds = D.FaceParsingDataset(prepared, 'train')
    (prepared / 'images/10.jpg').unlink()
    with pytest.raises(DataError, match=r'images/10\.jpg: missing\. Fix:'):
        ds[0]
    (prepared / 'labels/13.png').write_bytes(b'not a png')
    with pytest.raises(DataError, match=r'labels/13\.png: cannot be decoded.*Fix:'):
        ds[1]
    cv2.imwrite(str(prepared / 'labels/13.png'), np.full((64, 64), 40, np.uint8))
    with pytest.raises(DataError, match=r'13\.png: holds label 40'):
        ds[1]
    cv2.imwrite(str(prepared / 'labels/13.png'), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r'13\.png: size \(32, 32\) differs'):
        ds[1]


# ---------------------------------------------------------------- label statistics

def test_label_stats_equal_direct_count(prepared):
    stats = D.label_stats(prepared, progress=False)
    assert list(stats.columns) == ['id', 'split', *CLASSES] and len(stats) == 6
    for _, row in stats.iterrows():
        lab = cv2.imread(str(prepared / 'labels' / f"{row['id']}.png"), cv2.IMREAD_UNCHANGED)
        expected = [(lab == c).sum() for c in range(NUM_CLASSES)]
        assert row[list(CLASSES)].tolist() == expected
    assert stats.loc[stats['id'] == 11, 'split'].item() == 'val'
    assert D.label_stats(prepared, 'test', progress=False)['id'].tolist() == [12, 15]
    assert D.label_stats(prepared, ids=[14], progress=False)['split'].tolist() == ['val']


def test_summaries(prepared):
    stats = D.label_stats(prepared, progress=False)
    cs = D.class_summary(stats)
    assert len(cs) == 3 * NUM_CLASSES and cs['split'].unique().tolist() == ['train', 'val', 'test']
    train = cs[cs['split'] == 'train'].set_index('class')
    assert train.loc['l_eye', 'image_share'] == 1.0 and train.loc['hat', 'images'] == 0
    assert train['pixels'].sum() == 2 * 64 * 64
    np.testing.assert_allclose(train['pixel_share'].sum(), 1.0)
    areas = D.mask_areas(stats)
    assert (areas['area'] > 0).all() and 'hat' not in set(areas['class'])
    sizes = D.split_sizes(D.load_splits(prepared))
    assert sizes['images'].tolist() == [2, 2, 2] and sizes['split'].tolist() == ['train', 'val', 'test']
    summary = D.meta_summary(D.load_meta(prepared))
    assert summary['size'] == 64 and summary['train images'] == 2
