"""The installed `datacreator` console script as a subprocess: create, formats, resume, errors, a remote endpoint, serve-local, demo."""
import json, os, signal, subprocess, sys, urllib.request
from pathlib import Path

import pandas as pd
import pytest

from datacreator_nb.server import LocalServer, varied_examples
from datacreator_nb.task import preset, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent/'datacreator')


def cli(*args, env=None, timeout=60):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)


def last_json(stdout): return json.loads(stdout.strip().splitlines()[-1])


def test_create_simulated(tmp_path):
    out = tmp_path/'yn.jsonl'
    r = cli('create', '--preset', 'yesno_close', '--n', 12, '--simulated', '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('SIMULATED DATA')
    facts = last_json(r.stdout)
    assert (facts['examples'], facts['simulated'], facts['stop'], facts['file']) == (12, True, 'target reached', str(out))
    recs, task = read_jsonl(out), preset('yesno_close')
    assert [x['id'] for x in recs] == list(range(12)) and {x['model'] for x in recs} == {'simulated'}
    for x in recs: task.check(task.from_record(x))


def test_also_saves_csv_and_parquet_then_resumes(tmp_path):
    out = tmp_path/'m.jsonl'
    args = ('create', '--preset', 'mcqa_2', '--n', 10, '--simulated', '--out', out, '--quiet', '--also', tmp_path/'m.csv', tmp_path/'m.parquet')
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    recs = read_jsonl(out)
    assert len(recs) == 10
    assert pd.read_csv(tmp_path/'m.csv')['question'].tolist() == pd.read_parquet(tmp_path/'m.parquet')['question'].tolist() == [x['question'] for x in recs]
    rounds = last_json(r.stdout)['rounds']
    again = cli(*args)   # same out, same n: resumed, nothing left to do
    assert again.returncode == 0, again.stderr
    assert read_jsonl(out) == recs and last_json(again.stdout)['rounds'] == rounds and last_json(again.stdout)['tokens'] == last_json(r.stdout)['tokens']
    more = cli('create', '--preset', 'mcqa_2', '--n', 17, '--simulated', '--out', out, '--quiet')   # a bigger target continues the file
    assert more.returncode == 0, more.stderr
    grown = read_jsonl(out)
    assert grown[:10] == recs and [x['id'] for x in grown] == list(range(17))


def test_bad_task_file_is_one_line_naming_field_and_place(tmp_path):
    bad = tmp_path/'task.json'
    bad.write_text(json.dumps({'name': 't', 'task_type': 'yesno_close', 'exemple': {'question': 'q?'}}, indent=2))
    r = cli('create', '--task', bad, '--n', 3, '--simulated', '--out', tmp_path/'o.jsonl', '--quiet')
    assert r.returncode == 2 and r.stdout == ''
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and 'Traceback' not in r.stderr
    assert err[0].startswith(f'datacreator: error: {bad}:4') and "'exemple'" in err[0]


@pytest.mark.parametrize('flag', ['--per-request', '--parallel', '--n'])
def test_a_count_below_one_is_one_line(tmp_path, flag):
    args = ['create', '--preset', 'yesno_close', '--simulated', '--out', tmp_path/'o.jsonl', '--quiet']
    r = cli(*args, *(['--n', 5] if flag != '--n' else []), flag, 0)
    field = flag[2:].replace('-', '_')
    assert r.returncode == 2 and r.stderr.strip() == f"datacreator: error: field '{field}': must be a whole number of at least 1, got 0"


def test_unknown_strategy_is_an_argparse_error(tmp_path):
    r = cli('create', '--preset', 'yesno_close', '--n', 3, '--simulated', '--out', tmp_path/'o.jsonl', '--strategy', 'sideways')
    assert r.returncode == 2 and 'invalid choice' in r.stderr and "'sideways'" in r.stderr and 'Traceback' not in r.stderr


def test_base_url_of_a_running_server(tmp_path):
    out = tmp_path/'o.jsonl'
    with LocalServer(varied_examples(4), model='m') as srv:
        r = cli('create', '--preset', 'yesno_open', '--n', 8, '--base-url', srv.base_url, '--model', 'm', '--out', out, '--quiet', '--per-request', 4)
        sent = srv.count
    assert r.returncode == 0, r.stderr
    facts = last_json(r.stdout)
    assert (facts['examples'], facts['simulated']) == (8, False) and not r.stdout.startswith('SIMULATED')
    assert sent >= 2 and {x['model'] for x in read_jsonl(out)} == {'m'}
    assert {q['model'] for q in srv.requests} == {'m'}


def test_serve_local_answers_and_stops_on_sigint():
    p = subprocess.Popen([EXE, 'serve-local', '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        base_url = p.stdout.readline().strip()   # printed as soon as it listens (readline returns '' if it died)
        assert base_url.startswith('http://127.0.0.1:') and base_url.endswith('/v1'), p.stderr.read() if p.poll() is not None else base_url
        with urllib.request.urlopen(base_url + '/models', timeout=10) as resp:
            assert json.load(resp)['data'][0]['id'] == 'simulated'
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None: p.kill(); p.wait()


@pytest.mark.slow
def test_demo_with_the_embedded_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'OPENAI_BASE_URL'}
    r = cli('demo', '--out', tmp_path, '--n', 6, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/'demo.png').stat().st_size > 1000
    recs = read_jsonl(tmp_path/'data.jsonl')
    assert len(recs) == 6 and [x['id'] for x in recs] == list(range(6))
    assert 'examples/minute' in r.stdout and 'acceptance' in r.stdout
    facts = last_json(r.stdout)
    assert facts['examples'] == 6 and facts['simulated'] is False
