"""The README as a newcomer follows it: a fresh clone, `faceseg demo`, then every code block marked ```bash run, in order.

Each command runs as written, with only small-size flags appended (SHRINK: fewer faces, one epoch of two steps, no
download) so the whole walk takes a few minutes on two cores; a block that does not run as written fails the test."""
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

README = REPO / 'README.md'
RUN_BLOCK = re.compile(r'^```bash run\n(.*?)^```', re.M | re.S)
# appended to a command that starts with the key: the same command at small sizes (argparse and papermill: last wins)
SHRINK = {
    'faceseg demo': '--n 20 --epochs 1 --max-steps 2 --n-samples 2 --n-examples 1 --device cpu',
    'faceseg train': '--epochs 1 --max-steps 2 --encoder-weights None --workers 0 --device cpu',
    'faceseg test': '--n-examples 1 --device cpu',
    'faceseg predict': '--device cpu',
    'faceseg export': '',
    'papermill notebooks/01_data_exploration.ipynb': '-p n_samples 2',
    'papermill notebooks/02_train.ipynb': '-p epochs 1 -p max_steps 2 -p encoder_weights None -p workers 0 -p device cpu',
    'papermill notebooks/04_test_and_visualize.ipynb': '-p n_examples 1 -p device cpu',
    'papermill notebooks/05_parse_photos.ipynb': '-p max_photos 2 -p device cpu',
}


def runnable_commands(text: str) -> list[str]:
    """The commands of the ```bash run blocks, in order: continuation lines joined, blank and comment lines dropped."""
    commands = []
    for block in RUN_BLOCK.findall(text):
        for line in block.replace('\\\n', ' ').splitlines():
            if line.strip() and not line.lstrip().startswith('#'):
                commands.append(line.strip())
    return commands


def shrink(command: str) -> str:
    """`command` with its SHRINK flags in place of any trailing comment; ValueError for a command without a rule."""
    code = re.split(r'\s+#\s', command, maxsplit=1)[0]
    key = max((k for k in SHRINK if code.startswith(k)), key=len)
    return f'{code} {SHRINK[key]}'.rstrip()


def test_readme_marks_runnable_blocks_and_each_has_a_small_size_rule():
    text = README.read_text()
    commands = runnable_commands(text)
    assert len(commands) >= 8, commands
    for command in commands:
        assert any(command.startswith(k) for k in SHRINK), f'no small-size rule for the README command {command!r}'
        shlex.split(shrink(command))  # parses as a shell command line
    assert 'pip install -e . && faceseg demo' in text  # the first of the two commands, which the walk follows
    assert shrink('faceseg train --epochs 30  # note') == f"faceseg train --epochs 30 {SHRINK['faceseg train']}"


def test_main_install_opens_the_notebooks():
    deps = ' '.join(tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['dependencies'])
    for package in ('jupyterlab', 'ipykernel', 'ipywidgets', 'papermill'):
        assert package in deps, package
    assert 'jupyter lab notebooks/' in README.read_text()


def _clone(tmp_path):
    """The working tree as a fresh clone has it: tracked and unignored files only (no data, no outputs)."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split('\n')
    clone = tmp_path / 'clone'
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes(src.read_bytes())
    return clone


@pytest.mark.slow
def test_readme_runs_as_written_after_the_demo(tmp_path):
    clone = _clone(tmp_path)
    env = {**os.environ, 'PYTHONPATH': str(clone), 'OMP_NUM_THREADS': '1', 'FACESEG_PROGRESS': '0'}
    for command in ['faceseg demo'] + runnable_commands(README.read_text()):
        line = shrink(command)
        r = subprocess.run(['bash', '-o', 'pipefail', '-c', line], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f'README command failed as written: {command}\n(run as: {line})\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    assert not (clone / 'out.ipynb').exists() and not list(clone.glob('*.ipynb'))  # examples write under outputs/
    # "Run All" on 02_train with its own defaults (the real-data ones) right after the demo: it trains on the demo's faces
    r = subprocess.run(['papermill', 'notebooks/02_train.ipynb', 'outputs/02_defaults.ipynb', '-p', 'epochs', '1', '-p', 'max_steps', '2',
                        '-p', 'workers', '0', '-p', 'device', 'cpu', '-p', 'name', 'after-demo'], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using the demo's synthetic faces" in (clone / 'outputs' / '02_defaults.ipynb').read_text()
    status = subprocess.run([sys.executable, '-c', 'import faceseg_lib; print(faceseg_lib.__file__)'], env=env,
                            cwd=tmp_path, capture_output=True, text=True)
    assert str(clone) in status.stdout  # the walk ran the clone's code, not an installed copy


def _shell_commands(text: str) -> list[str]:
    """Every line of every ```bash block (run or not), continuation lines joined, comments cut."""
    lines = []
    for block in re.findall(r'^\s*```bash[^\n]*\n(.*?)^\s*```', text, re.M | re.S):
        lines += [re.split(r'\s+#\s', l.strip(), maxsplit=1)[0] for l in block.replace('\\\n', ' ').splitlines()]
    return [l for l in lines if l and not l.startswith('#')]


@pytest.mark.parametrize('doc', ['README.md', 'data/README.md'])
def test_every_faceseg_command_in_the_docs_parses(doc):
    """Blocks that need the real data or a GPU do not run in the tests, but their flags must exist as written."""
    from faceseg_lib.cli import parse_args
    commands = [c for line in _shell_commands((REPO / doc).read_text()) for c in line.split(' && ')
                if re.match(r'^(\w+=\S+ )*faceseg ', c.strip())]
    assert len(commands) >= 5, commands
    for command in commands:
        argv = shlex.split(command.strip())
        argv = argv[next(i for i, a in enumerate(argv) if a == 'faceseg') + 1:]
        try: parse_args(argv)
        except SystemExit: pytest.fail(f'{doc}: `{command}` does not parse')
