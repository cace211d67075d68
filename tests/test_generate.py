"""generate + server over real HTTP: faults survived or reported, exact retry counts, cache, budget, key hygiene, crash-resume."""
import asyncio, json, signal, sqlite3, subprocess, sys, time
from pathlib import Path

import pytest

from datacreator_nb.generate import BudgetExceeded, Completion, Failure, Generator, GenerationError
from datacreator_nb.server import LocalServer, varied_examples

ROOT = Path(__file__).resolve().parents[1]
KEY = 'sk-test-SECRET-0123456789abcdef'
echo = lambda req: f"echo: {req['messages'][-1]['content']}"


def msgs(text='hello'): return [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': text}]


class Waits:
    "A sleep that records what it was asked to wait, and does not wait."
    def __init__(self): self.log = []
    async def __call__(self, s): self.log.append(s)


@pytest.fixture
def srv():
    with LocalServer(echo) as s: yield s


def gen(srv, **kw):
    kw = {'model': 'simulated', 'base_url': srv.base_url, 'api_key': KEY, 'backoff': 0.01, 'timeout': 2.0, **kw}
    return Generator(**kw)


def run(coro): return asyncio.run(coro)


async def complete_closing(g, *args):
    try: return await g.complete(*args)
    finally: await g.aclose()


def test_first_request_text_and_usage(srv):
    c = run(complete_closing(gen(srv), msgs('hi')))
    assert (c.text, c.cached, c.retries, c.finish_reason) == ('echo: hi', False, 0, 'stop')
    assert (c.prompt_tokens, c.completion_tokens) == (-(-len('Be brief.hi') // 4), -(-len('echo: hi') // 4))
    assert c.cost_usd == 0.0 and srv.count == 1


@pytest.mark.parametrize('fault', ['429', '500', '502', '503', '504', 'drop', 'slow:1.5', 'empty'])
def test_retryable_fault_survived_with_exact_count(srv, fault):
    srv.inject(fault)
    g = gen(srv, timeout=0.5, sleep=Waits())
    c = run(complete_closing(g, msgs()))
    assert c.text == 'echo: hello'
    assert (c.retries, srv.count, g.stats.requests, g.stats.retries, g.stats.failures) == (1, 2, 2, 1, 0)
    assert srv.served == [fault.split(':')[0], None]


@pytest.mark.parametrize('fault,seconds', [('429:7', 7.0), ('503:3.5', 3.5), ('429', 1.0)])
def test_retry_after_is_the_wait(srv, fault, seconds):
    srv.inject(fault)
    waits = Waits()
    c = run(complete_closing(gen(srv, sleep=waits, backoff=0.01), msgs()))
    assert waits.log == [seconds] and c.waits == (seconds,)


def test_retry_after_capped_and_backoff_grows(srv):
    srv.inject('429:500', '500', '500', '500')
    waits = Waits()
    c = run(complete_closing(gen(srv, sleep=waits, backoff=1.0, max_wait=30), msgs()))
    assert c.retries == 4 and waits.log[0] == 30
    backoffs = waits.log[1:]  # after attempts 2, 3, 4: backoff * 2**(attempt-1) plus jitter in [0, backoff]
    assert len(backoffs) == 3 and all(lo <= w <= lo + 1 for w, lo in zip(backoffs, [2, 4, 8]))


def test_out_of_retries_is_a_failure_with_exact_counts(srv):
    srv.inject(*['500'] * 4)
    g = gen(srv, max_retries=3, sleep=Waits())
    (f,) = run(g.complete_many([msgs()]))
    assert isinstance(f, Failure) and (f.status, f.retries, f.index) == (500, 3, 0)
    assert 'HTTP 500' in f.reason and 'after 3 retries' in f.reason
    assert (srv.count, g.stats.requests, g.stats.retries, g.stats.failures) == (4, 4, 3, 1)


@pytest.mark.parametrize('status,error', [('400', 'BadRequestError'), ('401', 'AuthenticationError'), ('403', 'PermissionDenied'),
                                          ('404', 'NotFoundError'), ('422', 'UnprocessableEntity')])
def test_client_errors_not_retried(srv, status, error):
    srv.inject(status)
    g = gen(srv, sleep=Waits())
    with pytest.raises(GenerationError) as e:
        run(complete_closing(g, msgs()))
    assert (e.value.status, e.value.retries, srv.count, g.stats.retries) == (int(status), 0, 1, 0)
    assert f'HTTP {status}' in str(e.value) and 'simulated HTTP' in str(e.value) and 'not retried' in str(e.value)
    assert srv.base_url in str(e.value)


def test_wrong_key_reported_without_the_key():
    with LocalServer(echo, api_key='sk-right') as s:
        (f,) = run(gen(s).complete_many([msgs()]))
        assert (f.status, f.retries, s.count) == (401, 0, 1)
        assert 'Incorrect API key' in f.reason and KEY not in f.reason


def test_content_faults_arrive_as_text(srv):
    srv.inject('truncate', 'prose')
    t, p = run(gen(srv).complete_many([msgs('a'), msgs('b')], samples=[0, 0]))
    full = {'a': 'echo: a', 'b': 'echo: b'}
    got = {t.text: t.finish_reason, p.text: p.finish_reason}
    assert full['a'][:len(full['a']) // 2] in got or full['b'][:len(full['b']) // 2] in got
    assert 'length' in got.values() and any('Sure! Here are' in x for x in got)
    assert srv.count == 2 and all(r.retries == 0 for r in (t, p))


def test_a_failure_does_not_kill_the_batch(srv):
    srv.fault_fn = lambda req, i: '404' if req['messages'][-1]['content'] == 'bad' else None
    res = run(gen(srv).complete_many([msgs('a'), msgs('bad'), msgs('c')]))
    assert [r.ok for r in res] == [True, False, True] and res[1].index == 1 and res[1].status == 404


def test_cache_second_run_sends_nothing(srv, tmp_path):
    batch = [msgs(f'q{i}') for i in range(5)] + [msgs('q0')] * 2  # identical requests are distinct samples
    first = run(gen(srv, cache=tmp_path/'c.sqlite').complete_many(batch))
    assert srv.count == 7 and not any(r.cached for r in first)
    g2 = gen(srv, cache=tmp_path/'c.sqlite')
    second = run(g2.complete_many(batch))
    assert srv.count == 7 and all(r.cached and r.cost_usd == 0 for r in second)
    assert [r.text for r in first] == [r.text for r in second]
    assert (g2.stats.requests, g2.stats.cache_hits) == (0, 7)


def test_identical_requests_get_different_answers(tmp_path):
    with LocalServer(varied_examples(seed=3)) as s:
        ex = json.dumps({'question': 'Q?', 'options': ['True', 'False'], 'answer': True})
        res = run(gen(s, cache=tmp_path/'c.sqlite').complete_many([msgs(f'{ex}\nCreate 2 new examples.')] * 3))
        assert s.count == 3 and len({r.text for r in res}) == 3
        assert all(len(json.loads(r.text)) == 2 for r in res)


def test_cache_key_depends_on_params_not_key_or_url(srv, tmp_path):
    a = gen(srv, cache=tmp_path/'a.sqlite')
    assert a.key(msgs()) == Generator('simulated', base_url='http://other:1/v1', api_key='sk-other').key(msgs())
    assert a.key(msgs()) != gen(srv, temperature=0.2).key(msgs()) != gen(srv, response_format={'type': 'json_object'}).key(msgs())


def test_response_format_passed_through(srv):
    rf = {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': {'type': 'object'}}}
    run(complete_closing(gen(srv, response_format=rf, max_tokens=50, temperature=0.3), msgs()))
    body = srv.requests[0]
    assert (body['response_format'], body['max_tokens'], body['temperature'], body['model']) == (rf, 50, 0.3, 'simulated')


def test_budget_stops_new_requests_and_keeps_finished(srv):
    srv.responder = lambda req: 'word ' * 400  # 500 completion tokens: $0.001 at gpt-3.5-turbo
    g = gen(srv, model='gpt-3.5-turbo', concurrency=2, budget_usd=0.0005)
    res = run(g.complete_many([msgs(str(i)) for i in range(6)]))
    sent = [r for r in res if r.ok]
    assert len(sent) == srv.count == 2  # two in flight when the budget was still unspent
    assert all(r.budget and 'budget' in r.reason for r in res if not r.ok)
    assert (g.stats.budget_stops, g.stats.failures) == (4, 0) and g.stats.usd == pytest.approx(sum(r.cost_usd for r in sent))
    with pytest.raises(BudgetExceeded): run(complete_closing(g, msgs('more')))


def test_api_key_never_in_cache_reprs_or_results(srv, tmp_path):
    srv.inject('500')
    g = gen(srv, cache=tmp_path/'c.sqlite', sleep=Waits())
    res = run(g.complete_many([msgs(str(i)) for i in range(3)]))
    blobs = b''.join(p.read_bytes() for p in tmp_path.iterdir())
    assert len(blobs) > 0 and KEY.encode() not in blobs
    for text in [repr(g), g._repr_markdown_(), repr(g.stats), repr(g.cache), *map(repr, res)]:
        assert KEY not in text
    assert 'Authorization' not in json.dumps(srv.requests)


def test_sync_run_helper(srv):
    g = gen(srv)
    assert [r.text for r in g.run([msgs('x'), msgs('y')])] == ['echo: x', 'echo: y']
    assert [r.text for r in g.run([msgs('z')])] == ['echo: z']  # a second event loop gets its own client


SCRIPT = """
import sys
from datacreator_nb.generate import Generator
url, cache = sys.argv[1:3]
res = Generator('simulated', base_url=url, api_key='sk-x', cache=cache, concurrency=4).run(
    [[{'role': 'user', 'content': f'request {i}'}] for i in range(40)])
print(sum(r.ok for r in res))
"""


def cached_texts(path):
    with sqlite3.connect(path) as db: return {t for (t,) in db.execute('SELECT text FROM answers')}


def test_crash_resume_rerequests_only_unfinished(tmp_path):
    script, cache = tmp_path/'make.py', tmp_path/'c.sqlite'
    script.write_text(SCRIPT)
    with LocalServer(lambda req: req['messages'][-1]['content'], latency=0.2) as s:
        cmd = [sys.executable, str(script), s.base_url, str(cache)]
        p = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (cache.exists() and len(_rows(cache)) >= 8): time.sleep(0.05)
        p.send_signal(signal.SIGKILL); p.wait()
        finished, first_run = cached_texts(cache), s.count
        assert 8 <= len(finished) < 40 and first_run >= len(finished)
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert out.strip() == '40'
        second = [r['messages'][-1]['content'] for r in s.requests[first_run:]]
        assert len(finished) + len(second) == 40
        assert finished.isdisjoint(second) and finished | set(second) == {f'request {i}' for i in range(40)}


def _rows(path):
    try: return cached_texts(path)
    except sqlite3.Error: return set()
