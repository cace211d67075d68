"""`make docs`: every notebook renders to a page of a static site, and no internal link of the site points nowhere."""
import importlib.util, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('docs', ROOT/'.ci'/'docs.py')
docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(docs)


def test_site_has_a_page_per_notebook_and_no_broken_link(tmp_path):
    assert docs.build(tmp_path) == []
    pages = {p.stem for p in tmp_path.glob('*.html')}
    assert pages == {p.stem for p in (ROOT/'nbs').glob('*.ipynb')} | {'contents'}
    contents = (tmp_path/'contents.html').read_text()
    order = [contents.index(f'href="{p.stem}.html"') for p in docs.lessons(ROOT/'nbs')]
    assert order == sorted(order), 'the contents page lists the lessons in reading order'


def test_broken_links_are_found(tmp_path):
    (tmp_path/'a.html').write_text('<h1 id="top">A</h1><a href="b.html">b</a><a href="a.html#top">up</a>'
                                   '<a href="#nowhere">x</a><a href="https://example.org/">out</a><a href="c.html#top">c</a>')
    (tmp_path/'c.html').write_text('<p>no ids</p>')
    assert sorted(docs.broken_links(tmp_path)) == ['a.html: #nowhere', 'a.html: b.html', 'a.html: c.html#top']


def test_notebook_links_become_page_links(tmp_path):
    nb = tmp_path/'x.ipynb'
    nb.write_text('{"cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": ["# X\\n", "See [the loop](05_create.ipynb#The-loop)."]}],'
                  ' "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    assert 'href="05_create.html#The-loop"' in docs.render(nb, '<nav></nav>')
