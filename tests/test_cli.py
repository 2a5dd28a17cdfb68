"""The `faceseg` command: help texts, clear errors for bad input, and the README's main command end to end."""
import json
import os
import subprocess
import sys

import pytest

from faceseg_lib.cli import build_parser, main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'faceseg_lib.cli', *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize('command', [[], ['synth'], ['prepare'], ['demo'], ['train'], ['test'], ['sweep'], ['predict'], ['export'], ['app']])
def test_help_explains_every_command(command):
    r = run_cli(*command, '--help')
    assert r.returncode == 0, r.stderr
    assert 'usage: faceseg' in r.stdout and len(r.stdout.splitlines()) > 5


def _subparsers():
    """Each subcommand's parser with its options dataclass and the TrainConfig fields it takes."""
    from faceseg_lib import cli
    choices = build_parser()._subparsers._group_actions[0].choices
    return [(name, choices[name], options, (train or {}).get('only', []))
            for name, (options, _, _, train) in cli.COMMANDS.items() if options is not None]


@pytest.mark.parametrize('name,parser,options,train_fields', _subparsers(), ids=lambda v: v if isinstance(v, str) else '')
def test_flags_are_the_options_fields(name, parser, options, train_fields):
    """One schema: a subcommand's flag destinations are its options' fields (and the TrainConfig fields it takes)."""
    import dataclasses
    dests = {a.dest for a in parser._actions} - {'help'}
    assert dests == {f.name for f in dataclasses.fields(options)} | set(train_fields)
    assert len(train_fields) == len(set(train_fields))


@pytest.mark.parametrize('name,parser,options,train_fields', _subparsers(), ids=lambda v: v if isinstance(v, str) else '')
def test_help_shows_each_default_once(name, parser, options, train_fields):
    formatter = parser._get_formatter()
    twice = [a.dest for a in parser._actions if a.help and formatter._expand_help(a).count('(default:') > 1]
    assert not twice, f'faceseg {name} --help shows the default twice for {twice}'
    text = parser.format_help()
    assert f'usage: faceseg {name}' in text and (options.__doc__.split()[0] in text)  # the options' docstring describes it


def test_options_defaults_agree_with_the_functions_they_feed():
    """Options passed on by name (`cli._call`) name a parameter of their function and share its default."""
    import dataclasses, inspect
    from faceseg_lib import cli
    from faceseg_lib.pipeline import demo
    from faceseg_lib.predict import predict
    from faceseg_lib.prepare import prepare
    from faceseg_lib.synthetic import synthesize
    from faceseg_lib.video import predict_video
    from faceseg_lib.app import serve
    for options, func, skip in ((cli.SynthOptions, synthesize, ()), (cli.PrepareOptions, prepare, ()),
                                (cli.PredictOptions, predict, cli._VIDEO_ONLY), (cli.PredictOptions, predict_video, cli._PHOTO_ONLY),
                                (cli.DemoOptions, demo, ()), (cli.AppOptions, serve, ())):
        params = inspect.signature(func).parameters
        for f in dataclasses.fields(options):
            if f.name in skip: continue  # predict's options that only videos take, and the other way round
            name = 'progress' if f.name == 'quiet' else f.name
            assert name in params, f'{options.__name__}.{f.name} is no parameter of {func.__name__}'
            want, have = params[name].default, f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if want is inspect.Parameter.empty or have is dataclasses.MISSING: continue
            have = not have if f.name == 'quiet' else have
            assert have == want, f'{options.__name__}.{f.name} = {have!r}, but {func.__name__} defaults to {want!r}'


def test_flags_the_readme_and_tests_use_are_accepted():
    from faceseg_lib.cli import parse_args
    for argv in (['prepare', 'raw', 'out', '--skip-bad'], ['prepare', 'raw', 'out', '--strict', '-q', '--workers', '2'],
                 ['predict', 'm.pt', 'a.jpg', '--no-detect', '--json', '--quiet'], ['export', 'm.pt', 'm.onnx', '--no-check'],
                 ['sweep', 'Unet:resnet34', '--set', 'lr=1e-3', '--set', 'seed=1', '--devices', 'cuda:0', 'cuda:1', '--retry-failed'],
                 ['demo', 'data/CelebAMask-HQ.zip', '--overwrite', '--encoder-weights', 'None', '--n-samples', '2'],
                 ['test', 'best.pt', '--tta', '--split', 'val', '--data', 'd', '--vis-dir', 'vis', '--n-examples', '16']):
        parse_args(argv)
    args = parse_args(['sweep', '--epochs', '2'])
    assert args.epochs == 2 and not hasattr(args, 'batch_size')  # a training flag not given: TrainConfig's default applies


def test_every_subcommand_is_in_the_main_help():
    help_text = build_parser().format_help()
    for name in ('synth', 'prepare', 'train', 'test', 'demo', 'sweep', 'predict', 'export'):
        assert name in help_text


def test_bad_input_exits_2_with_file_and_fix(tmp_path, capsys):
    assert main(['prepare', str(tmp_path / 'missing'), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / 'missing') in err and 'Fix' in err and 'Traceback' not in err


def test_unknown_flag_is_refused():
    r = run_cli('demo', '--bogus')
    assert r.returncode == 2 and 'unrecognized arguments: --bogus' in r.stderr


def test_train_flags_are_the_training_parser(tmp_path):
    r = run_cli('train', '--data-dir', tmp_path / 'missing', '--encoder-weights', 'None', '--out-dir', tmp_path / 'runs')
    assert r.returncode == 2 and str(tmp_path / 'missing') in r.stderr and 'faceseg prepare' in r.stderr
    assert not (tmp_path / 'runs').exists()


def test_synth_then_prepare_then_train_from_the_command_line(tmp_path):
    raw, prep = tmp_path / 'raw', tmp_path / 'prep'
    r = run_cli('synth', raw, '--n', 6, '--seed', 3, '--workers', 1, '-q')
    assert r.returncode == 0, r.stderr
    r = run_cli('prepare', raw, prep, '--size', 64, '--split', 'fractions:0.5,0.25,0.25', '--workers', 1, '-q')
    assert r.returncode == 0, r.stderr
    meta = json.loads((prep / 'meta.json').read_text())
    assert meta['size'] == 64 and sum(meta['counts'].values()) == 6
    assert len(list((prep / 'labels').glob('*.png'))) == 6
    r = run_cli('train', '--data-dir', prep, '--size', 64, '--arch', 'Unet', '--encoder', 'resnet18', '--encoder-weights', 'None',
                '--epochs', 1, '--batch-size', 2, '--workers', 0, '--out-dir', tmp_path / 'runs', '--name', 'cli')
    assert r.returncode == 0, r.stdout + r.stderr
    assert {'config.json', 'history.csv', 'best.pt', 'last.pt'} <= {p.name for p in (tmp_path / 'runs' / 'cli').iterdir()}


def test_help_is_fast_and_imports_no_torch():
    """`faceseg --help` must answer at once: the heavy libraries are imported inside the commands."""
    r = subprocess.run([sys.executable, '-c', 'import sys; from faceseg_lib.cli import build_parser; build_parser().format_help(); '
                        'print(sorted(m for m in ("torch", "papermill", "segmentation_models_pytorch", "matplotlib") if m in sys.modules))'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr


def test_test_command_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(['test', str(tmp_path / 'runs' / 'best.pt'), '-q']) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'runs' / 'best.pt'}: no such checkpoint file" in err and 'Fix' in err and 'Traceback' not in err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_refuses_to_overwrite(tmp_path):
    """The README's main command at tiny settings: data, exploration, training, test; every output where SUMMARY.md says."""
    out = tmp_path / 'demo'
    args = ['demo', '--out', out, '--n', 10, '--size', 64, '--n-samples', 2, '--epochs', 1, '--max-steps', 1,
            '--batch-size', 4, '--n-examples', 1, '--device', 'cpu', '--workers', 1, '-q']
    r = subprocess.run([sys.executable, '-m', 'faceseg_lib.cli', *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout + r.stderr
    for nb in ('01_data_exploration', '02_train', '04_test_and_visualize'):
        assert (out / f'{nb}.ipynb').is_file(), nb
    assert {'config.json', 'history.csv', 'best.pt'} <= {p.name for p in (out / 'runs' / 'demo').iterdir()}
    config = json.loads((out / 'runs' / 'demo' / 'config.json').read_text())
    assert (config['size'], config['epochs'], config['max_steps'], config['encoder_weights']) == (64, 1, 1, None)
    test_dir = out / '04_test_and_visualize'
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    assert metrics['split'] == 'test' and metrics['images'] >= 1
    assert {'metrics.md', 'per_image.csv', 'confusion.csv', 'per_class_f1.png', 'confusion.png', 'worst.png', 'best.png',
            'overlays.png'} <= {p.name for p in test_dir.iterdir()}
    figures = list(out.rglob('*.png'))
    assert len(figures) >= 9 and all(p.stat().st_size > 1000 for p in figures)
    summary = (out / 'SUMMARY.md').read_text()
    mean = 'n/a' if metrics['mean_f1'] is None else f"{metrics['mean_f1']:.4f}"
    assert f'test mean F1 (18 face parts): {mean}' in summary
    assert '04_test_and_visualize/metrics.md' in summary and '02_train.ipynb' in summary
    assert '| metric | background |' in summary  # the per-class table itself
    r = run_cli(*args)
    assert r.returncode == 2 and '--overwrite' in r.stderr
