"""Packaging for datacreator_nb: every value comes from settings.ini, the file nbdev 2 also reads."""
from configparser import ConfigParser
from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']

def words(key):
    "The space-separated list stored under `key`."
    return c.get(key, '').split()

setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    author=c['author'], author_email=c['author_email'], license=c['license'],
    url=c['git_url'], keywords=c['keywords'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    packages=find_packages(include=[c['lib_name'], c['lib_name'] + '.*']),
    package_data={c['lib_name']: ['data/*/*.json', 'data/*/*.jsonl']},
    python_requires='>=' + c['min_python'],
    install_requires=words('requirements'),
    extras_require={'local': words('local_requirements'), 'embed': words('embed_requirements'), 'dev': words('dev_requirements')},
    entry_points={'console_scripts': words('console_scripts'),
                  'nbdev': [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    zip_safe=False,
)
