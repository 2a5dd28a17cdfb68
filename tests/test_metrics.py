"""faceseg_lib.metrics against independent computations: a numpy loop over classes and smp.metrics."""
import json
import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from faceseg_lib.labels import CLASSES, NUM_CLASSES
from faceseg_lib.metrics import ConfusionMatrix, confusion_counts, per_image_scores

ABSENT = (14, 15)  # hat and earring: never in truth nor prediction in `batches`


def _labels(gen, n, size=16):
    """Skewed random label maps (like faces: much background/skin, few earrings) without the ABSENT classes."""
    w = torch.ones(NUM_CLASSES); w[:2] = 8; w[list(ABSENT)] = 0
    return torch.multinomial(w, n * size * size, replacement=True, generator=gen).view(n, size, size)


@pytest.fixture
def batches():
    """Three batches of (pred, target); predictions agree with the truth on about 60 % of the pixels."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in (3, 2, 4):
        t = _labels(gen, n)
        p = torch.where(torch.rand(t.shape, generator=gen) < 0.6, t, _labels(gen, n))
        out.append((p, t))
    return out


def _reference(pred, target, c=NUM_CLASSES):
    """Per-class TP/FP/FN summed over all images, and F1/IoU from them, by a plain loop over classes."""
    p, t = np.asarray(pred).ravel(), np.asarray(target).ravel()
    tp = np.array([np.sum((p == k) & (t == k)) for k in range(c)], dtype=float)
    fp = np.array([np.sum((p == k) & (t != k)) for k in range(c)], dtype=float)
    fn = np.array([np.sum((p != k) & (t == k)) for k in range(c)], dtype=float)
    with np.errstate(invalid='ignore', divide='ignore'):
        return tp, fp, fn, 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def _all(batches):
    return torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches])


def test_matrix_layout_rows_truth_cols_prediction():
    cm = ConfusionMatrix(3).update(torch.tensor([[[2, 2]]]), torch.tensor([[[1, 1]]]))
    assert cm.matrix[1, 2] == 2 and cm.matrix.sum() == 2 and cm.matrix.dtype == np.int64


def test_per_class_scores_match_numpy_reference(batches):
    cm = ConfusionMatrix()
    for p, t in batches: cm.update(p, t)
    tp, fp, fn, f1, iou = _reference(*_all(batches))
    np.testing.assert_array_equal(np.stack(cm.stats()), np.stack([tp, fp, fn]))
    np.testing.assert_allclose(cm.per_class_f1(), f1, equal_nan=True)
    np.testing.assert_allclose(cm.per_class_iou(), iou, equal_nan=True)
    np.testing.assert_allclose(cm.mean_f1(), np.nanmean(f1[1:]))
    np.testing.assert_allclose(cm.mean_iou(), np.nanmean(iou[1:]))
    np.testing.assert_allclose(cm.pixel_accuracy(), tp.sum() / _all(batches)[1].numel())


def test_dataset_level_scores_match_smp_metrics(batches):
    """smp's per-image stats summed over the set, then reduction='none' per class and 'micro' over all classes."""
    p, t = _all(batches)
    tp, fp, fn, tn = smp.metrics.get_stats(p, t, mode='multiclass', num_classes=NUM_CLASSES)
    tp, fp, fn, tn = (s.sum(0) for s in (tp, fp, fn, tn))  # dataset level: sum over images first
    smp_f1 = smp.metrics.f1_score(tp, fp, fn, tn, reduction='none').numpy()
    smp_iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction='none').numpy()
    cm = ConfusionMatrix().update(p, t)
    present = ~np.isnan(cm.per_class_f1())
    np.testing.assert_allclose(cm.per_class_f1()[present], smp_f1[present], rtol=1e-6)
    np.testing.assert_allclose(cm.per_class_iou()[present], smp_iou[present], rtol=1e-6)
    # smp scores an absent class 1.0 (zero_division=1); we call it absent (NaN) so it cannot inflate the mean
    np.testing.assert_array_equal(np.flatnonzero(~present), ABSENT)
    assert (smp_f1[list(ABSENT)] == 1).all()
    micro = smp.metrics.f1_score(tp, fp, fn, tn, reduction='micro').item()
    assert cm.micro_fscore() == pytest.approx(micro, rel=1e-6)
    assert cm.micro_fscore() == pytest.approx(cm.pixel_accuracy())  # one label per pixel: micro F1 = accuracy
    micro_fg = smp.metrics.f1_score(tp[1:], fp[1:], fn[1:], tn[1:], reduction='micro').item()
    assert cm.micro_fscore(include_background=False) == pytest.approx(micro_fg, rel=1e-6)


def test_ignore_index_matches_smp(batches):
    p, t = _all(batches)
    t = t.clone(); t[:, :4] = 255
    cm = ConfusionMatrix(ignore_index=255).update(p, t)
    assert cm.matrix.sum() == (t != 255).sum()
    tp, fp, fn, tn = (s.sum(0) for s in smp.metrics.get_stats(p, t, mode='multiclass', num_classes=NUM_CLASSES, ignore_index=255))
    np.testing.assert_array_equal(np.stack(cm.stats()), torch.stack([tp, fp, fn]).numpy())


def test_absent_classes_are_nan_and_left_out_of_means():
    t = torch.zeros(1, 4, 4, dtype=torch.long); t[0, 0] = 1      # truth: background and skin only
    p = t.clone(); p[0, 1, 0] = 2                                  # nose predicted once, never true
    cm = ConfusionMatrix().update(p, t)
    f1 = cm.per_class_f1()
    assert f1[1] == 1.0 and f1[2] == 0.0                           # predicted-but-absent scores 0
    assert np.isnan(f1[3:]).all() and np.isnan(cm.per_class_iou()[3:]).all()
    assert cm.mean_f1() == pytest.approx(0.5)                      # (skin 1 + nose 0) / 2, not / 18
    s = cm.summary()
    assert s['f1']['eye_g'] is None and s['f1']['nose'] == 0.0 and s['mean_f1'] == pytest.approx(0.5)
    json.dumps(s, allow_nan=False)
    assert math.isnan(ConfusionMatrix().mean_f1()) and ConfusionMatrix().summary()['mean_f1'] is None


def test_accumulation_equals_one_shot_and_merge(batches):
    many, merged = ConfusionMatrix(), ConfusionMatrix()
    parts = []
    for p, t in batches:
        many.update(p, t)
        parts.append(ConfusionMatrix().update(p, t))
        merged.merge(parts[-1])
    one = ConfusionMatrix().update(*_all(batches))
    np.testing.assert_array_equal(many.matrix, one.matrix)
    np.testing.assert_array_equal(merged.matrix, one.matrix)
    np.testing.assert_array_equal(sum(parts[1:], parts[0]).matrix, one.matrix)
    np.testing.assert_array_equal(parts[0].matrix, ConfusionMatrix().update(*batches[0]).matrix)  # `+` copies
    assert many.reset().matrix.sum() == 0


def test_logits_input_equals_argmax_input(batches):
    p, t = batches[0]
    logits = torch.randn(p.shape[0], NUM_CLASSES, *p.shape[1:], generator=torch.Generator().manual_seed(1))
    a = ConfusionMatrix().update(logits, t)
    b = ConfusionMatrix().update(logits.argmax(1), t)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.matrix.sum() == t.numel()


def test_bad_input_is_refused():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match='outside 0..18'): ConfusionMatrix().update(t + 19, t)
    with pytest.raises(ValueError, match='outside 0..18'): ConfusionMatrix().update(t, t - 1)
    with pytest.raises(ValueError, match='differ in shape'): ConfusionMatrix().update(t[:, :2], t)
    with pytest.raises(ValueError, match='channels'): ConfusionMatrix().update(torch.zeros(1, 3, 4, 4), t)
    with pytest.raises(ValueError, match='19 and 3 classes'): ConfusionMatrix().merge(ConfusionMatrix(3))


def test_counts_are_int64_on_the_input_device():
    m = confusion_counts(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
    assert m.dtype == torch.int64 and m[0, 0] == 32
    cm = ConfusionMatrix().update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert cm.tensor.device.type == 'cpu' and cm.tensor.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_accumulates_on_gpu(batches):
    cm = ConfusionMatrix()
    for p, t in batches: cm.update(p.cuda(), t.cuda())
    assert cm.tensor.is_cuda
    np.testing.assert_array_equal(cm.matrix, ConfusionMatrix().update(*_all(batches)).matrix)


def test_summary_and_table_layout(batches):
    cm = ConfusionMatrix().update(*_all(batches))
    s = json.loads(json.dumps(cm.summary(), allow_nan=False))
    assert set(s) >= {'mean_f1', 'mean_iou', 'micro_fscore', 'pixel_acc', 'f1', 'iou'}
    assert list(s['f1']) == list(CLASSES) and s['f1']['hat'] is None and s['iou']['ear_r'] is None
    assert s['f1']['hair'] == pytest.approx(cm.per_class_f1()[CLASSES.index('hair')])
    from faceseg_lib.report import MEAN_ROW, per_class_table
    df = per_class_table(s)  # the kit's one per-class table, made from the summary alone
    assert list(df.index) == list(CLASSES) + [MEAN_ROW] and list(df.columns) == ['class', 'f1', 'iou', 'pixels']
    assert df.loc[MEAN_ROW, 'iou'] == pytest.approx(cm.mean_iou()) and df.loc['ear_r', 'class'] == 'earring'
    assert df.loc['hair', 'pixels'] == s['support']['hair']


def test_per_image_scores_match_reference(batches):
    p, t = _all(batches)
    p[0] = t[0]                                             # a perfect image
    p[1] = 0; t[1] = 0                                      # background only in truth and prediction
    scores = per_image_scores(p, t)
    assert scores.shape == (p.shape[0],) and scores[0] == 1.0 and np.isnan(scores[1])
    for i in range(2, p.shape[0]):
        f1 = _reference(p[i], t[i])[3]
        assert scores[i] == pytest.approx(np.nanmean(f1[1:]))


def _rank(rank, world, init_file, q):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    t = torch.full((1, 2, 2), rank, dtype=torch.long)
    cm = ConfusionMatrix().update(t, t).all_reduce()
    q.put((rank, cm.matrix))
    dist.destroy_process_group()


def test_all_reduce_sums_over_ranks(tmp_path):
    """Two gloo ranks, each counting its own pixels, both end with the sum."""
    import multiprocessing as mp
    if 'fork' not in mp.get_all_start_methods(): pytest.skip('needs fork (spawning re-imports smp: too slow for a unit test)')
    ctx = mp.get_context('fork')
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, tmp_path / 'init', q)) for r in range(2)]
    for pr in procs: pr.start()
    results = dict(q.get(timeout=60) for _ in procs)
    for pr in procs: pr.join(timeout=30)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64); expected[0, 0] = expected[1, 1] = 4
    for r in range(2): np.testing.assert_array_equal(results[r], expected)


def test_all_reduce_without_process_group_is_a_no_op(batches):
    cm = ConfusionMatrix().update(*batches[0])
    before = cm.matrix
    np.testing.assert_array_equal(cm.all_reduce().matrix, before)
