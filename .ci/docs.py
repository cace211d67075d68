"""Render every notebook in nbs/ to a static HTML site in lesson order, and fail on a broken internal link.

    .venv/bin/python .ci/docs.py [OUT]     # default OUT: _docs   (what `make docs` runs)

Quarto cannot be installed on the project's machines, so nbdev_docs is out: nbconvert renders the
stored outputs (the notebooks are executed before they are committed). Links between notebooks
(`05_create.ipynb`, `05_create.ipynb#the-loop`) become links between pages; every relative link and
anchor of the site is then checked, and the exit status is 1 when one points nowhere.
"""
import html, json, re, sys
from pathlib import Path

from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
HREF = re.compile(r'''(?:href|src)=["']([^"']+)["']''')
ID = re.compile(r'''\bid=["']([^"']+)["']''')


def lessons(nbs: Path) -> list[Path]:
    "The notebooks in reading order: the index first, then by file name."
    return sorted(nbs.glob('*.ipynb'), key=lambda p: (p.stem != 'index', p.name))


def title_and_summary(nb: Path) -> tuple[str, str]:
    "The first markdown heading of a notebook and the quote line under it."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    title = re.search(r'^#\s+(.+)$', text, re.M)
    summary = re.search(r'^>\s*(.+)$', text, re.M)
    return (title[1].strip() if title else nb.stem), (summary[1].strip() if summary else '')


def nav_bar(pages: list[Path], i: int) -> str:
    "Links to the contents page and to the previous and next lesson."
    prev = f'<a href="{pages[i-1].stem}.html">&larr; {pages[i-1].stem}</a>' if i > 0 else ''
    nxt = f'<a href="{pages[i+1].stem}.html">{pages[i+1].stem} &rarr;</a>' if i + 1 < len(pages) else ''
    return f'<nav style="display:flex;gap:2em;padding:.5em 1em;border-bottom:1px solid #ccc">{prev}<a href="contents.html">contents</a>{nxt}</nav>'


def render(nb: Path, nav: str) -> str:
    "One notebook as an HTML page with the navigation bar, its notebook links pointing at pages."
    body, _ = HTMLExporter(template_name='lab').from_filename(str(nb))
    body = re.sub(r'''(href=["'])([\w.-]+)\.ipynb''', r'\1\2.html', body)
    return body.replace('<main>', '<main>' + nav, 1)


def contents_page(pages: list[Path]) -> str:
    "The navigation page: every lesson in order, with its title and summary."
    rows = []
    for p in pages:
        title, summary = title_and_summary(p)
        rows.append(f'<li><a href="{p.stem}.html">{html.escape(title)}</a> <code>{p.name}</code><br><small>{html.escape(summary)}</small></li>')
    return ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>datacreator_nb</title></head>'
            '<body style="font-family:sans-serif;max-width:60em;margin:2em auto"><h1>datacreator_nb: the lessons in order</h1>'
            f'<ol start="0">{"".join(rows)}</ol></body></html>')


def broken_links(site: Path) -> list[str]:
    "Relative links and anchors of the site that point at no page or no id."
    ids = {p.name: set(ID.findall(p.read_text(encoding='utf-8'))) for p in site.glob('*.html')}
    bad = []
    for page in site.glob('*.html'):
        for link in HREF.findall(page.read_text(encoding='utf-8')):
            if re.match(r'^(?:[a-z]+:|//)', link): continue   # http:, https:, data:, mailto:
            target, _, anchor = link.partition('#')
            name = target or page.name
            if name not in ids or (anchor and anchor not in ids[name]): bad.append(f'{page.name}: {link}')
    return bad


def build(out: Path) -> list[str]:
    "Write the site to `out`; the broken links found in it."
    out.mkdir(parents=True, exist_ok=True)
    pages = lessons(ROOT/'nbs')
    for i, nb in enumerate(pages): (out/f'{nb.stem}.html').write_text(render(nb, nav_bar(pages, i)), encoding='utf-8')
    (out/'contents.html').write_text(contents_page(pages), encoding='utf-8')
    return broken_links(out)


if __name__ == '__main__':
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT/'_docs'
    bad = build(out)
    print(f"docs: {len(list(out.glob('*.html')))} pages in {out}; start at {out/'contents.html'}")
    if bad: sys.exit('broken internal links:\n' + '\n'.join(bad))
