"""One path policy: every `faceseg` command run from a subfolder of a project takes relative paths from the working
directory, as every Unix tool does (not from the folder above that holds a pyproject.toml)."""
import pytest
import torch

from faceseg_lib.cli import main

pytestmark = pytest.mark.slow


def run(*argv):
    assert main([str(a) for a in argv]) == 0, argv


def test_every_command_reads_and_writes_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    project = tmp_path / 'myproj'
    (project / 'sub').mkdir(parents=True)
    (project / 'pyproject.toml').write_text('[project]\nname = "myproj"\n')  # the old policy resolved against this folder
    monkeypatch.chdir(project / 'sub')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        run('synth', 'raw', '--n', 10, '--workers', 1, '-q')
        run('prepare', 'raw', 'prep', '--size', 64, '--split', 'fractions:0.6,0.2,0.2', '--workers', 1, '-q')
        tiny = ['--size', 64, '--arch', 'Unet', '--encoder', 'resnet18', '--encoder-weights', 'None', '--epochs', 1,
                '--max-steps', 1, '--batch-size', 2, '--workers', 0]
        run('train', '--data-dir', 'prep', '--out-dir', 'runs', '--name', 'r', *tiny)
        run('test', 'runs/r/best.pt', '--out', 'ev', '--n-examples', 1, '--workers', 0, '--device', 'cpu', '-q')
        run('test', 'runs/r/best.pt', '--data', 'prep', '--split', 'val', '--out', 'ev-val', '--n-examples', 0, '--workers', 0, '-q')
        run('predict', 'runs/r/best.pt', 'prep/images', '--out', 'pred', '--no-detect', '--device', 'cpu', '-q')
        run('export', 'runs/r/best.pt', 'm.onnx', '--images', 'prep', '--n-check', 2)
        run('predict', 'm.onnx', 'prep/images', '--out', 'pred-onnx', '--no-detect', '-q')
        run('sweep', 'Unet:resnet18', '--data-dir', 'prep', '--out', 'sw', '--epochs', 1, '--size', 64, '--devices', 'cpu',
            '--encoder-weights', 'None', '--batch-size', 2, '--max-steps', 1, '-q')
    finally:
        torch.set_num_threads(n)
    here = project / 'sub'
    for made in ('raw/CelebA-HQ-img', 'prep/splits.csv', 'runs/r/best.pt', 'ev/metrics.json', 'ev-val/metrics.json',
                 'pred/summary.json', 'm.onnx', 'pred-onnx/summary.json', 'sw/results.csv', 'sw/Unet-resnet18/metrics.json'):
        assert (here / made).exists(), made
    assert sorted(p.name for p in project.iterdir()) == ['pyproject.toml', 'sub']  # nothing landed beside pyproject.toml
    config = (here / 'runs/r/config.json').read_text()
    assert str(here / 'prep') in config and str(here / 'runs') in config  # the checkpoint knows its data from anywhere
