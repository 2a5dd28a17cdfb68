"""Shared test fixtures: paths to the repository and to the real CelebAMask-HQ sample (skipped where absent)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(os.environ.get('FACESEG_SAMPLE', REPO.parent / 'shared' / 'celebamask-hq-sample'))


@pytest.fixture(scope='session')
def sample_dir() -> Path:
    """The real 300-image CelebAMask-HQ sample beside the repository; the test is skipped where it is absent."""
    if not (SAMPLE_DIR / 'CelebA-HQ-img').is_dir():
        pytest.skip(f'real CelebAMask-HQ sample not found at {SAMPLE_DIR}')
    return SAMPLE_DIR
