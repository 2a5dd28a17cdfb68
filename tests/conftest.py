"""Shared test fixtures: the repository, the real CelebAMask-HQ sample (skipped where absent), the synthetic training set."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(os.environ.get('FACESEG_SAMPLE', REPO.parent / 'shared' / 'celebamask-hq-sample'))


@pytest.fixture(scope='session')
def sample_dir() -> Path:
    """The real 300-image CelebAMask-HQ sample beside the repository; the test is skipped where it is absent."""
    if not (SAMPLE_DIR / 'CelebA-HQ-img').is_dir():
        pytest.skip(f'real CelebAMask-HQ sample not found at {SAMPLE_DIR}')
    return SAMPLE_DIR


@pytest.fixture(scope='session')
def train_set(tmp_path_factory) -> Path:
    """24 synthetic faces (128 px images, 64 px masks) prepared at 64 px, split 60/20/20: 14 train, 5 val, 5 test.

    Built once per test process, for every file that trains or evaluates on it."""
    from faceseg_lib.prepare import prepare
    from faceseg_lib.synthetic import synthesize
    from helpers import SIZE
    root = tmp_path_factory.mktemp('faceseg-train')
    synthesize(root / 'raw', n=24, seed=0, image_size=128, mask_size=64, workers=1, progress=False)
    prepare(root / 'raw', root / 'prepared', size=SIZE, split='fractions:0.6,0.2,0.2', workers=1, progress=False)
    return root / 'prepared'


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine two OpenMP threads can wait on each other 10x longer than they compute."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
