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
from test_dataset import face_label, make_prepared

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
