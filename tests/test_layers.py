"""The module table of ARCHITECTURE.md is the law: every module is in it, and none imports a module of a higher layer."""
import ast
import re

import pytest

from conftest import REPO

LIB = REPO / 'faceseg_lib'


def layer_table() -> dict[str, int]:
    """module -> layer, read from the table in ARCHITECTURE.md (rows `| layer | `module` | ...`)."""
    rows = re.findall(r'^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|', (REPO / 'ARCHITECTURE.md').read_text(), flags=re.M)
    return {module: int(layer) for layer, module in rows}


def imports_of(path) -> set[str]:
    """The faceseg_lib modules a file imports, at the top or inside functions (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: found.add(node.module.split('.')[0])
            elif node.level == 1: found.update(a.name for a in node.names)  # from . import x
            elif node.module and node.module.startswith('faceseg_lib.'): found.add(node.module.split('.')[1])
            elif node.module == 'faceseg_lib': found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('faceseg_lib.'))
    return found - {'__version__'}


MODULES = sorted(p.stem for p in LIB.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def test_every_module_is_in_the_table_and_nothing_else():
    assert sorted(layer_table()) == MODULES


@pytest.mark.parametrize('module', MODULES)
def test_no_module_imports_a_higher_layer(module):
    layers = layer_table()
    up = {m: layers.get(m) for m in imports_of(LIB / f'{module}.py') if layers.get(m, 99) > layers[module]}
    assert not up, f'{module} (layer {layers[module]}) imports higher layers: {up}'


def test_the_check_catches_an_upward_import(tmp_path):
    f = tmp_path / 'm.py'
    f.write_text('def g():\n    from faceseg_lib.train import fit\nfrom .cli import main\nimport faceseg_lib.sweep\n')
    assert imports_of(f) == {'train', 'cli', 'sweep'}
