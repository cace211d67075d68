"""The installed `datacreator` console script as a subprocess: create, formats, resume, errors, a remote endpoint, serve-simulated, demo."""
import fcntl, json, os, signal, subprocess, sys, urllib.request
from pathlib import Path

import pandas as pd
import pytest

from datacreator_nb.server import SimulatedServer, varied_examples
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
    assert [x['_meta']['id'] for x in recs] == list(range(12)) and {x['_meta']['model'] for x in recs} == {'simulated'}
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
    assert grown[:10] == recs and [x['_meta']['id'] for x in grown] == list(range(17))


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
    with SimulatedServer(varied_examples(4), model='m') as srv:
        r = cli('create', '--preset', 'yesno_open', '--n', 8, '--base-url', srv.base_url, '--model', 'm', '--out', out, '--quiet', '--per-request', 4)
        sent = srv.count
    assert r.returncode == 0, r.stderr
    facts = last_json(r.stdout)
    assert (facts['examples'], facts['simulated']) == (8, False) and not r.stdout.startswith('SIMULATED')
    assert sent >= 2 and {x['_meta']['model'] for x in read_jsonl(out)} == {'m'}
    assert {q['model'] for q in srv.requests} == {'m'}


def test_serve_simulated_answers_and_stops_on_sigint():
    p = subprocess.Popen([EXE, 'serve-simulated', '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
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
    assert len(recs) == 6 and [x['_meta']['id'] for x in recs] == list(range(6))
    assert 'examples/minute' in r.stdout and 'acceptance' in r.stdout
    facts = last_json(r.stdout)
    assert facts['examples'] == 6 and facts['simulated'] is False


# ---------------------------------------------------------------- issue 11: fatal errors, options, files, throughput

def test_a_refused_key_is_exit_1_with_the_servers_message(tmp_path):
    out = tmp_path/'o.jsonl'
    with SimulatedServer(varied_examples(4), model='m', api_key='right') as srv:
        env = {**os.environ, 'MY_KEY': 'wrong'}
        r = cli('create', '--preset', 'yesno_close', '--n', 10, '--base-url', srv.base_url, '--model', 'm', '--api-key-env', 'MY_KEY',
                '--out', out, '--quiet', env=env)
        sent = srv.count
        again = cli('create', '--preset', 'yesno_close', '--n', 10, '--base-url', srv.base_url, '--model', 'm', '--api-key-env', 'MY_KEY',
                    '--out', out, '--quiet', env={**env, 'MY_KEY': 'right'})
    assert r.returncode == 1 and r.stdout == '' and sent == 1
    assert r.stderr.strip().splitlines()[-1].startswith('datacreator: error: HTTP 401') and 'Traceback' not in r.stderr
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)['examples'] == 10


@pytest.mark.parametrize('flag,value,name', [('--concurrency', 0, 'concurrency'), ('--timeout', 0, 'timeout'), ('--top-p', 2, 'top_p'),
                                             ('--price-in', -1, 'price_in'), ('--stall-rounds', 0, 'stall_rounds'), ('--max-rounds', 0, 'max_rounds')])
def test_impossible_values_are_refused_before_anything_runs(tmp_path, flag, value, name):
    out = tmp_path/'o.jsonl'
    with SimulatedServer(varied_examples(4), model='m') as srv:
        r = cli('create', '--preset', 'yesno_close', '--n', 5, '--base-url', srv.base_url, '--model', 'm', '--out', out, '--quiet', flag, value)
        assert srv.count == 0
    assert r.returncode == 2 and 'Traceback' not in r.stderr and name in r.stderr.strip() and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_generator_options_reach_the_requests(tmp_path):
    out = tmp_path/'o.jsonl'
    with SimulatedServer(varied_examples(4), model='m') as srv:
        r = cli('create', '--preset', 'yesno_close', '--n', 10, '--base-url', srv.base_url, '--model', 'm', '--out', out, '--quiet',
                '--top-p', 0.5, '--concurrency', 2, '--timeout', 5, '--price-in', 2, '--price-out', 2, '--budget-usd', 1)
        bodies = srv.requests
    assert r.returncode == 0, r.stderr
    assert {b.get('top_p') for b in bodies} == {0.5}
    facts = last_json(r.stdout)
    assert facts['examples'] == 10 and facts['usd'] == pytest.approx(facts['tokens'] * 2 / 1e6, rel=1e-3)
    assert (tmp_path/'o.jsonl.cache.sqlite').exists()


def test_an_unknown_also_format_is_refused_before_the_run(tmp_path):
    out = tmp_path/'o.jsonl'
    with SimulatedServer(varied_examples(4), model='m') as srv:
        r = cli('create', '--preset', 'yesno_close', '--n', 5, '--base-url', srv.base_url, '--model', 'm', '--out', out, '--quiet',
                '--also', tmp_path/'o.csv', tmp_path/'o.xlsx')
        assert srv.count == 0
    assert r.returncode == 2 and "unknown format '.xlsx'" in r.stderr and not out.exists()


def test_replies_from_the_cache_are_not_throughput(tmp_path):
    out = tmp_path/'o.jsonl'
    args = ('create', '--preset', 'yesno_close', '--n', 10, '--base-url', None, '--model', 'm', '--out', out, '--quiet')
    with SimulatedServer(varied_examples(4), model='m') as srv:
        first = cli(*[a if a is not None else srv.base_url for a in args])
        for f in (out, tmp_path/'o.jsonl.state.json', tmp_path/'o.jsonl.rounds.jsonl'): f.unlink()   # the run deleted, its cache kept
        sent = srv.count
        again = cli(*[a if a is not None else srv.base_url for a in args])
        assert srv.count == sent
    one, two = last_json(first.stdout), last_json(again.stdout)
    assert (one['fresh_examples'], one['cached_replies']) == (10, 0) and one['examples_per_min'] > 0
    assert (two['examples'], two['fresh_examples'], two['cached_replies'], two['examples_per_min']) == (10, 0, two['replies'], 0.0)
    assert f"{two['replies']} of the {two['replies']} replies of this run came from the request cache" in again.stdout


def test_demo_takes_the_lock_before_deleting_a_running_demos_files(tmp_path):
    from datacreator_nb.create import create
    from datacreator_nb.generate import Generator
    data = tmp_path/'data.jsonl'
    with SimulatedServer(varied_examples(4)) as srv:
        create(preset('yesno_close'), 6, generator=Generator(model='simulated', base_url=srv.base_url, api_key='x'), out=data, progress=False)
        before = data.read_bytes()
        with open(tmp_path/'data.jsonl.lock', 'w') as lock:   # a demo still running in this folder
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            r = cli('demo', '--out', tmp_path, '--n', 6, env={**os.environ, 'OPENAI_BASE_URL': srv.base_url, 'OPENAI_MODEL': 'simulated'})
    assert r.returncode == 2 and 'another run is writing this file now' in r.stderr
    assert data.read_bytes() == before and (tmp_path/'data.jsonl.state.json').exists()


# ---------------------------------------------------------------- profile, attributes, balance, curation (create's options)

def state_settings(out): return json.loads(Path(f'{out}.state.json').read_text())['settings']


def test_paper_profile_from_the_command_line(tmp_path):
    out = tmp_path/'p.jsonl'
    r = cli('create', '--preset', 'yesno_close', '--n', 12, '--strategy', 'random', '--simulated', '--profile', 'paper', '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    s = state_settings(out)
    assert (s['profile'], s['top_p'], s['temperature'], s['parallel'], s['by_level'], s['style']) == ('paper', 0.0, 1.0, 1, True, 'paper')
    assert [json.loads(l)['requests'] for l in Path(f'{out}.rounds.jsonl').read_text().splitlines()] == [1, 1, 1]
    bad = cli('create', '--preset', 'yesno_close', '--n', 5, '--simulated', '--profile', 'paper', '--top-p', 0.5, '--out', tmp_path/'q.jsonl', '--quiet')
    assert bad.returncode == 2 and 'top_p=0.0 (the generator has 0.5)' in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_attributes_file_and_balance(tmp_path):
    out, spec = tmp_path/'a.jsonl', tmp_path/'attrs.json'
    spec.write_text(json.dumps({'attributes': {'topic': ['bees', 'tides', 'chess'], 'difficulty': ['easy', 'hard']}}))
    r = cli('create', '--preset', 'yesno_close', '--n', 15, '--strategy', 'naive', '--parallel', 3, '--simulated', '--attributes', spec, '--balance',
            '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    recs = read_jsonl(out)
    assert {x['_meta']['conditions']['topic'] for x in recs} == {'bees', 'tides', 'chess'} and all(x['_meta']['label_targets'] for x in recs)
    assert state_settings(out)['balance'] is True and state_settings(out)['attributes']['topic']['values'] == ['bees', 'tides', 'chess']
    spec.write_text('{"topic": ["bees",')
    bad = cli('create', '--preset', 'yesno_close', '--n', 5, '--simulated', '--attributes', spec, '--out', tmp_path/'b.jsonl', '--quiet')
    assert bad.returncode == 2 and f'{spec}:1' in bad.stderr and 'not valid JSON' in bad.stderr


def test_curate_in_the_loop_and_the_curate_command(tmp_path):
    out = tmp_path/'c.jsonl'
    r = cli('create', '--preset', 'yesno_close', '--n', 10, '--strategy', 'random', '--simulated', '--curate', '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    assert all('_curation' in x for x in read_jsonl(out)) and state_settings(out)['curator']['threshold'] == 3.0
    kept = cli('curate', out, tmp_path/'kept.jsonl')
    assert kept.returncode == 0, kept.stderr


def test_the_embedded_model_gets_a_slot_per_request_and_its_own_timeout(monkeypatch):
    "Without an endpoint, `create` starts the embedded model with `--parallel` slots (else 8) and its longer timeout unless `--timeout` is given."
    import contextlib, datacreator_nb.cli as cli_mod
    asked = []
    @contextlib.contextmanager
    def fake_default_generator(slots=8, **kwargs): asked.append((slots, kwargs)); yield None
    monkeypatch.setattr(cli_mod, 'default_generator', fake_default_generator)
    common = ['create', '--preset', 'yesno_close', '--n', '5', '--out', 'o.jsonl']
    for extra in (['--parallel', '3'], ['--timeout', '5']):
        with cli_mod.generator_from_args(cli_mod.parser().parse_args(common + extra), None): pass
    (slots, kw), (default_slots, kw5) = asked
    assert (slots, default_slots) == (3, 8) and 'timeout' not in kw and kw5['timeout'] == 5.0
    with SimulatedServer(varied_examples(4), model='m') as srv:
        with cli_mod.generator_from_args(cli_mod.parser().parse_args(common + ['--base-url', srv.base_url, '--model', 'm']), None) as g:
            assert g.timeout == 60.0   # any other endpoint: the generator's default
