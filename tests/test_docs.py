"""The documentation site: the HTML renderer of tools/build_docs.py on small notebooks, and the built site
(`_docs/`, which `.ci/run` builds with `python tools/build_docs.py` before the tests) opened in headless Chromium over
a local http.server: its home page and the API page of one module hold the real content.

The browser test is skipped, with the reason, where the site is not built or Chromium/playwright is missing."""
import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
from fastcore.basics import AttrDict

from helpers import headless_chromium, load_script

REPO = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get('FACESEG_DOCS', REPO / '_docs'))


def build_docs():
    return load_script('tools/build_docs.py')


def cell(kind, source, outputs=()):
    return AttrDict(cell_type=kind, source=source, outputs=list(outputs))


def test_cells_render_as_quarto_would_show_them():
    """Directives hide code (echo), outputs (output) or whole cells (include); show_doc's Markdown becomes HTML."""
    from nbconvert.filters.markdown import markdown2html
    b = build_docs()
    doc = {'output_type': 'execute_result', 'data': {'text/markdown': '### predict\n\n*Parse the faces*', 'text/plain': 'x'}}
    nb = AttrDict(cells=[cell('raw', '---\ntitle: predict\noutput-file: predict.html\n---\n'),
                         cell('markdown', '## Reading photos'),
                         cell('code', '#| echo: false\n#| output: asis\nshow_doc(predict)', [doc]),
                         cell('code', 'shown_code = 1', [{'output_type': 'stream', 'text': 'printed <line>'}]),
                         cell('code', '#| include: false\nhidden_code = 1', [{'output_type': 'stream', 'text': 'hidden output'}]),
                         cell('code', '#| output: false\nquiet_code = 1', [{'output_type': 'stream', 'text': 'quiet output'}])])
    assert b.frontmatter(nb) == {'title': 'predict', 'output-file': 'predict.html'}
    out = b.render_cells(nb, markdown2html)
    assert '<h3 id="predict">predict' in out                                 # show_doc's heading
    assert '<em>Parse the faces</em>' in out and 'show_doc' not in out          # echo: false hides the call
    assert 'shown_code' in out and 'printed &lt;line&gt;' in out
    assert 'hidden' not in out and 'quiet output' not in out and 'quiet_code' in out


def test_links_go_to_pages_or_to_the_repository():
    b = build_docs()
    pages = {'notebooks/05_parse_photos.ipynb': 'parse_photos.html', 'README.md': 'index.html'}
    body = '<a href="notebooks/05_parse_photos.ipynb">05</a> <a href="data/README.md#x">data</a> <a href="https://x.org">x</a>'
    got = b.fix_links(body, 'README.md', Path('index.html'), pages, 'https://github.com/faceseg/faceseg')
    assert got == ('<a href="parse_photos.html">05</a> <a href="https://github.com/faceseg/faceseg/blob/main/data/README.md#x">data</a> '
                   '<a href="https://x.org">x</a>')
    assert b.fix_links('<a href="../../README.md">r</a>', 'notebooks/lib/13_predict.ipynb', Path('lib/predict.html'), pages, '') == '<a href="../index.html">r</a>'


def test_images_of_the_repository_are_copied_into_the_site(tmp_path):
    b = build_docs()
    repo, out = tmp_path / 'repo', tmp_path / 'out'
    (repo / 'benchmarks' / 'figures').mkdir(parents=True); (repo / 'benchmarks' / 'figures' / 'a.png').write_bytes(b'png')
    body = '<p><img alt="a" src="benchmarks/figures/a.png" /> <img src="https://x.org/b.png"></p>'
    assert b.copy_images(body, 'README.md', Path('index.html'), out, repo) == body  # the home page sits where the README does
    assert (out / 'benchmarks' / 'figures' / 'a.png').read_bytes() == b'png'
    got = b.copy_images('<img src="../benchmarks/figures/a.png">', 'notebooks/02_train.ipynb', Path('lib/train.html'), out, repo)
    assert got == '<img src="../benchmarks/figures/a.png">'  # a page one folder down
    with pytest.raises(FileNotFoundError, match=r'README.md: image missing.png'):
        b.copy_images('<img src="missing.png">', 'README.md', Path('index.html'), out, repo)


@pytest.fixture
def site_url():
    """The built site served over http on a free localhost port."""
    if not (SITE / 'index.html').is_file():
        pytest.skip(f'the docs site is not built ({SITE}/index.html missing): run `python tools/build_docs.py` first, as .ci/run does')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{server.server_address[1]}/'
    finally: server.shutdown(); server.server_close()


def test_site_home_and_module_page_in_a_browser(site_url, tmp_path):
    with headless_chromium() as browser:
        page = browser.new_page(viewport={'width': 1300, 'height': 1000})
        assert page.goto(site_url).status == 200
        assert 'faceseg' in page.title()
        text = page.locator('main').inner_text()
        assert 'The two commands' in text and 'faceseg demo' in text   # the README is the home page
        page.screenshot(path=str(tmp_path / 'index.png'))
        page.locator('nav a', has_text='predict').first.click()       # the sidebar leads to the module's page
        page.wait_for_load_state()
        assert page.url.endswith('lib/predict.html') and page.title().startswith('predict')
        text = page.locator('main').inner_text()
        for name in ('read_photo', 'load_parser', 'FlipTTA', 'predict'):  # its API, from the exported functions' show_doc
            assert name in text, name
        assert 'Parse the faces in photos into label maps' in text       # predict's docstring
        page.screenshot(path=str(tmp_path / 'predict.png'))
