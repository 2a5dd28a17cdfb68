"""faceseg_lib.core: the one path policy, the one device rule, the one atomic writer, the worker counts."""
import os
import stat

import pytest

from faceseg_lib import core
from faceseg_lib.errors import DataError


def test_relative_paths_start_at_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / 'pyproject.toml').touch()
    (tmp_path / 'sub').mkdir()
    monkeypatch.chdir(tmp_path / 'sub')  # a project folder above does not change what a relative path means
    assert core.find_repo_root() == tmp_path.resolve()
    assert core.resolve_path('data/x') == tmp_path.resolve() / 'sub' / 'data/x'
    assert core.resolve_path(tmp_path / 'abs') == tmp_path / 'abs'
    assert core.resolve_path('~/x') == core.Path.home() / 'x'


def test_notebook_paths_start_at_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert core.repo_path('data/x') == core.repo_root() / 'data/x'
    assert (core.repo_root() / 'notebooks' / '02_train.ipynb').is_file() and core.repo_path(None) is None


@pytest.mark.parametrize('device, problem', [('gpu0', 'is not a device name'), ('cuda:1x', 'is not a device name'),
                                             ('cuda:99', 'cuda:99')])
def test_one_device_rule(device, problem):
    with pytest.raises(DataError, match='Fix') as e: core.check_device(device, '--device')
    assert problem in str(e.value) and f"--device {device!r}" in str(e.value)
    assert core.check_device(' cpu ') == 'cpu' and core.device_problems('auto') == []


def test_loader_workers_share_the_cores(monkeypatch):
    monkeypatch.setattr(core, 'usable_cores', lambda: 16)
    assert core.loader_workers(-1) == 15          # all cores but the training process's own
    assert core.loader_workers(-1, world=4) == 3  # four processes (DDP, or a sweep on four GPUs) split them
    assert core.loader_workers(-1, world=32) == 1
    assert core.loader_workers(4) == 4 and core.loader_workers(64) == 16 and core.loader_workers(0) == 0


def test_atomic_writes_keep_the_old_file_on_failure_and_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        core._UMASK, saved = 0o027, core._UMASK
        p = core.write_atomic(tmp_path / 'r.json', '{}')
        assert stat.S_IMODE(p.stat().st_mode) == 0o640  # the group reads results, as with any file the user makes
        with pytest.raises(ZeroDivisionError):
            with core.atomic_path(p) as tmp: tmp.write_text('half'); 1 / 0
        assert p.read_text() == '{}' and [q.name for q in tmp_path.iterdir()] == ['r.json']
    finally:
        os.umask(old); core._UMASK = saved
