"""faceseg_lib.viz: palette colours, overlays, sample grids and dataset plots (Figures returned, PNGs written)."""
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from faceseg_lib import dataset as D
from faceseg_lib import viz as V
from faceseg_lib.labels import CLASSES, CLASS_INDEX, NUM_CLASSES, PALETTE
from faceseg_lib.report import plot_per_class
from helpers import face_label, make_prepared

C = CLASS_INDEX


def test_colorize_exact_colours():
    lab = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(1, -1).repeat(2, axis=0)
    out = V.colorize(lab)
    assert out.dtype == np.uint8 and out.shape == (2, NUM_CLASSES, 3)
    np.testing.assert_array_equal(out[0], PALETTE)
    assert out[0, C['skin']].tolist() == [204, 0, 0] and out[0, C['hair']].tolist() == [0, 0, 204]
    np.testing.assert_array_equal(V.colorize(torch.tensor([[4, 5]])), PALETTE[[4, 5]][None])
    with pytest.raises(ValueError, match='0..18'):
        V.colorize(np.array([[255]]))


def test_overlay_leaves_background_and_blends_parts():
    lab = face_label(32)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = V.overlay(img, lab, alpha=0.4)
    bg = lab == 0
    np.testing.assert_array_equal(out[bg], img[bg])
    expected = np.rint(0.6 * img[~bg] + 0.4 * PALETTE[lab[~bg]]).astype(np.uint8)
    np.testing.assert_array_equal(out[~bg], expected)
    np.testing.assert_array_equal(V.overlay(img, lab, alpha=1.0)[~bg], PALETTE[lab[~bg]])
    with pytest.raises(ValueError, match='differ in size'):
        V.overlay(img, lab[:16])


def test_overlay_accepts_normalised_tensor():
    lab = face_label(32)
    img = PALETTE[lab]
    x = D.eval_transform(32)(image=img, mask=lab)['image']
    assert np.abs(V.overlay(x, lab).astype(int) - V.overlay(img, lab)).max() <= 1


def test_legend_handles():
    hs = V.legend_handles()
    assert len(hs) == NUM_CLASSES and hs[4].get_label() == 'left eye'
    np.testing.assert_allclose(hs[4].get_facecolor()[:3], PALETTE[4] / 255)
    assert [h.get_label() for h in V.legend_handles(['hair', 5])] == ['hair', 'right eye']


def _png_size(path):
    img = cv2.imread(str(path))
    assert img is not None, f'{path} is not a readable image'
    return img.shape[1], img.shape[0]


def _expected_px(fig, dpi=120):
    return fig.get_size_inches() * dpi


def test_show_samples_grid_legend_and_png(tmp_path):
    labs = [face_label(32, shift=s) for s in range(3)]
    imgs = [PALETTE[lab] for lab in labs]
    fig = V.show_samples(imgs, labs, ncols=2, titles=['a', 'b', 'c'], save=tmp_path / 'sub/grid.png')
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2 * 2 and len(fig.legends) == 1
    shown = [t.get_text() for t in fig.legends[0].get_texts()]
    assert 'left eye' in shown and 'background' not in shown and 'hat' not in shown
    assert [ax.get_title(loc='left') for ax in fig.axes if ax.get_title(loc='left')] == ['a', 'b', 'c']
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), V.overlay(imgs[0], labs[0]))
    w, h = _png_size(tmp_path / 'sub/grid.png')
    assert w > 400 and h > 150  # bbox 'tight' trims a little, never to nothing
    with pytest.raises(ValueError, match='2 images but 1 label'):
        V.show_samples(imgs[:2], labs[:1])


@pytest.fixture
def stats(tmp_path):
    return D.label_stats(make_prepared(tmp_path / 'prep', n=6, size=32), progress=False)


@pytest.mark.parametrize('plot', ['plot_class_share', 'plot_mask_areas', 'plot_split_sizes'])
def test_dataset_plots_return_figures_and_write_pngs(stats, tmp_path, plot):
    arg = stats[['id', 'split']] if plot == 'plot_split_sizes' else stats
    fig = getattr(V, plot)(arg, save=tmp_path / f'{plot}.png')
    assert isinstance(fig, Figure)
    w, h = _png_size(tmp_path / f'{plot}.png')
    ew, eh = _expected_px(fig)
    assert 0.7 * ew < w < 1.2 * ew and 0.7 * eh < h < 1.2 * eh, ((w, h), (ew, eh))
    assert getattr(V, plot)(arg) is not None  # save=None writes nothing and still returns the figure
    assert sorted(p.name for p in tmp_path.glob('*.png')) == [f'{plot}.png']


def test_class_share_plot_shows_the_summary_numbers(stats):
    fig = V.plot_class_share(stats)
    ax_pixels, ax_images = fig.axes[:2]
    assert ax_pixels.get_xscale() == 'log'
    assert {t.get_text() for t in ax_pixels.get_yticklabels()} >= {'left eye', 'right eye', 'hat'}
    widths = sorted(round(p.get_width(), 6) for p in ax_images.patches if p.get_width() > 0)
    cs = D.class_summary(stats)
    assert widths == sorted(round(v, 6) for v in cs['image_share'] if v > 0)


def test_split_sizes_plot_annotates_counts(tmp_path):
    splits = pd.DataFrame({'id': range(10), 'split': ['train'] * 7 + ['val'] * 2 + ['test']})
    fig = V.plot_split_sizes(splits)
    assert [t.get_text() for t in fig.axes[0].texts] == ['7 (70%)', '2 (20%)', '1 (10%)']


def test_plots_leave_no_open_pyplot_figures(stats):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    V.plot_class_share(stats); V.plot_mask_areas(stats); V.plot_split_sizes(stats)
    V.show_samples([PALETTE[face_label(16)]], [face_label(16)])
    assert plt.get_fignums() == before


# --- evaluation plots ------------------------------------------------------------------------------------------------

def halves(top, bottom, size=16):
    lab = np.full((size, size), C[top], np.uint8); lab[size // 2:] = C[bottom]
    return lab


def test_error_map_colours():
    truth, pred = halves('l_eye', 'r_eye'), halves('l_eye', 'l_eye')
    out = V.error_map(truth, pred)
    np.testing.assert_array_equal(out[:8], np.full((8, 16, 3), V.CORRECT_GREY))
    np.testing.assert_array_equal(out[8:], np.broadcast_to(V.ERROR_RGB, (8, 16, 3)))
    np.testing.assert_array_equal(V.error_map(truth, pred, wrong='pred')[8:], np.broadcast_to(PALETTE[C['l_eye']], (8, 16, 3)))
    with pytest.raises(ValueError, match="'red' or 'pred'"):
        V.error_map(truth, pred, wrong='blue')


def test_show_predictions_puts_palette_colours_where_the_classes_are(tmp_path):
    truth, pred = halves('u_lip', 'l_lip'), halves('u_lip', 'mouth')
    photo = np.full((16, 16, 3), 90, np.uint8)
    fig = V.show_predictions([photo, photo], [truth, truth], [pred, truth], titles=['id 1', 'id 2'], save=tmp_path / 'p.png')
    assert len(fig.axes) == 8 and len(fig.legends) == 1
    rgb = V.render(fig)
    image_ax, truth_ax, pred_ax, err_ax = fig.axes[:4]
    expect = [(image_ax, 0.5, [90, 90, 90]), (truth_ax, 0.25, PALETTE[C['u_lip']]), (truth_ax, 0.75, PALETTE[C['l_lip']]),
              (pred_ax, 0.75, PALETTE[C['mouth']]), (err_ax, 0.75, V.ERROR_RGB)]
    for ax, fy, colour in expect:
        np.testing.assert_array_equal(V.pixel_of(fig, ax, 0.5, fy, rgb), colour)
    assert V.pixel_of(fig, err_ax, 0.5, 0.25, rgb).tolist() != list(V.ERROR_RGB)  # right pixels are not red
    assert [ax.get_title(loc='left') for ax in fig.axes[3::4]] == ['errors 50.0%', 'errors 0.0%']
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ['mouth', 'upper lip', 'lower lip', 'wrong pixel']
    w, h = _png_size(tmp_path / 'p.png')
    ew, eh = _expected_px(fig)
    assert 0.7 * ew < w < 1.2 * ew and 0.7 * eh < h < 1.2 * eh, ((w, h), (ew, eh))
    with pytest.raises(ValueError, match='2 images, 1 label maps and 2 predictions'):
        V.show_predictions([photo, photo], [truth], [pred, pred])


def test_confusion_heatmap_is_row_normalised_with_display_names(tmp_path):
    m = np.diag(np.full(NUM_CLASSES, 80)).astype(np.int64)
    m[C['l_eye'], C['r_eye']] = 20; m[C['u_lip'], C['mouth']] = 80  # left->right eye 20%, upper lip->mouth 50%
    m[C['hat']] = 0
    fig = V.plot_confusion(m, save=tmp_path / 'c.png')
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names[C['l_eye']] == 'left eye' and names[C['u_lip']] == 'upper lip'
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    shown = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(NUM_CLASSES, NUM_CLASSES)
    assert shown[C['l_eye'], C['r_eye']] == pytest.approx(0.2) and shown[C['u_lip'], C['mouth']] == pytest.approx(0.5)
    assert np.isnan(shown[C['hat']]).all()  # no hat in the truth: an empty row, not zeros
    assert {'20', '50', '80'} <= {t.get_text() for t in ax.texts}
    assert _png_size(tmp_path / 'c.png')[0] > 800


def test_per_class_f1_bars_in_class_colours():
    f1 = {c: 0.1 * (i % 10) for i, c in enumerate(CLASSES)}; f1['neck_l'] = None
    fig = plot_per_class({'f1': f1, 'iou': f1, 'mean_f1': 0.4, 'mean_iou': 0.4})
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [0 if f1[c] is None else round(f1[c], 6) for c in CLASSES]
    for i in range(NUM_CLASSES):
        np.testing.assert_allclose(bars[i].get_facecolor()[:3], PALETTE[i] / 255)
    assert 'absent' in [t.get_text() for t in fig.axes[0].texts]


def test_show_overlays_blends_predictions_and_keeps_background():
    photo = np.full((16, 16, 3), 100, np.uint8)
    pred = np.zeros((16, 16), np.uint8); pred[:, 8:] = C['hair']
    fig = V.show_overlays([photo] * 3, [pred] * 3, titles=list('abc'), ncols=2, alpha=1.0)
    assert len(fig.axes) == 4 and not fig.axes[3].images  # 3 images on a 2 x 2 grid
    rgb = V.render(fig)
    np.testing.assert_array_equal(V.pixel_of(fig, fig.axes[2], 0.75, 0.5, rgb), PALETTE[C['hair']])
    np.testing.assert_array_equal(V.pixel_of(fig, fig.axes[2], 0.25, 0.5, rgb), [100, 100, 100])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['hair']


def test_evaluation_plots_leave_no_open_pyplot_figures():
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    lab = halves('skin', 'nose')
    V.show_predictions([PALETTE[lab]], [lab], [lab]); V.plot_confusion(np.eye(NUM_CLASSES))
    plot_per_class({'f1': {c: 0.5 for c in CLASSES}, 'iou': {}, 'mean_f1': 0.5, 'mean_iou': 0.5}); V.show_overlays([PALETTE[lab]], [lab])
    assert plt.get_fignums() == before
