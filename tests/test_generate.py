"""generate + server over real HTTP: faults survived or reported, exact retry counts, cache, budget, key hygiene, crash-resume."""
import asyncio, json, signal, sqlite3, subprocess, sys, time
from pathlib import Path

import pytest

from datacreator_nb.generate import BudgetExceeded, Completion, Failure, Generator, GenerationError, endpoint_name
from datacreator_nb.server import SimulatedServer, varied_examples

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
    with SimulatedServer(echo) as s: yield s


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
    assert 'HTTP 500' in f.reason and 'after 3 retries' in f.reason and not f.fatal
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
    assert srv.base_url in str(e.value) and e.value.fatal


def test_wrong_key_reported_without_the_key():
    with SimulatedServer(echo, api_key='sk-right') as s:
        (f,) = run(gen(s).complete_many([msgs()]))
        assert (f.status, f.retries, f.fatal, s.count) == (401, 0, True, 1)
        assert f.reason == f"HTTP 401: Incorrect API key provided. (model 'simulated' at {s.base_url}; not retried)" and KEY not in f.reason


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
    assert srv.count == 7 and all(r.cached for r in second)
    assert [r.text for r in first] == [r.text for r in second]
    assert (g2.stats.requests, g2.stats.cache_hits) == (0, 7)


def test_identical_requests_get_different_answers(tmp_path):
    with SimulatedServer(varied_examples(seed=3)) as s:
        ex = json.dumps({'question': 'Q?', 'options': ['True', 'False'], 'answer': True})
        res = run(gen(s, cache=tmp_path/'c.sqlite').complete_many([msgs(f'{ex}\nCreate 2 new examples.')] * 3))
        assert s.count == 3 and len({r.text for r in res}) == 3
        assert all(len(json.loads(r.text)) == 2 for r in res)


def test_cache_never_answers_from_another_endpoint(tmp_path):
    "Issue 11.1: the same cache file, model and batch against another server (a real model's, e.g. vLLM on another port) sends every request there."
    batch = [msgs(f'q{i}') for i in range(3)]
    with SimulatedServer(echo) as a, SimulatedServer(lambda req: 'from b') as b:
        run(gen(a, model='my-model', cache=tmp_path/'c.sqlite').complete_many(batch))
        g = gen(b, model='my-model', cache=tmp_path/'c.sqlite')
        res = run(g.complete_many(batch))
        assert (a.count, b.count) == (3, 3) and [r.text for r in res] == ['from b'] * 3 and not any(r.cached for r in res)
        assert g.endpoint == b.base_url


def test_simulated_server_on_a_new_port_replays_from_cache(tmp_path):
    "Issue 12.2: the simulated server gets a new port every run; a resumed run against it replays from the cache, as `create` resumes it."
    batch = [msgs(f'q{i}') for i in range(3)]
    with SimulatedServer(echo) as a: first = run(gen(a, model='simulated-yesno', cache=tmp_path/'c.sqlite').complete_many(batch))
    with SimulatedServer(lambda req: 'from b') as b:
        g = gen(b, model='simulated-yesno', cache=tmp_path/'c.sqlite')
        second = run(g.complete_many(batch))
        assert a.base_url != b.base_url and b.count == 0 and all(r.cached for r in second)
        assert [r.text for r in second] == [r.text for r in first] == [f'echo: q{i}' for i in range(3)]
        assert g.endpoint == 'simulated-yesno on this machine'  # `create`'s resume check uses `g.identity`


def test_a_server_started_for_the_run_shares_the_cache_across_ports(tmp_path):
    "A server started for the run (e.g. the embedded model), named by `endpoint_name(..., started=True)`, is one endpoint whatever its port."
    batch, made = [msgs('q')], []
    for srv in (SimulatedServer(echo), SimulatedServer(lambda req: 'another answer')):
        with srv:
            g = gen(srv, model='smollm2-135m-instruct', endpoint=endpoint_name('smollm2-135m-instruct', srv.base_url, started=True), cache=tmp_path/'c.sqlite')
            made.append((srv.base_url, run(g.complete_many(batch))[0], srv.count, g.identity['base_url']))
    (url_a, first, _, _), (url_b, second, count_b, name) = made
    assert url_a != url_b and count_b == 0 and second.cached and second.text == first.text == 'echo: q'
    assert name == 'smollm2-135m-instruct on this machine'


def test_cache_key_depends_on_endpoint_and_every_param_not_on_the_key(srv):
    a = gen(srv)
    assert a.key(msgs()) == gen(srv, api_key='sk-other').key(msgs())
    assert a.key(msgs()) != Generator('simulated', base_url='http://10.0.0.7:1/v1').key(msgs())  # another machine
    assert a.key(msgs()) == Generator('simulated', base_url='http://127.0.0.1:1/v1').key(msgs())  # the simulated server on another port
    others = [gen(srv, temperature=0.2), gen(srv, top_p=0.5), gen(srv, max_tokens=9), gen(srv, response_format={'type': 'json_object'}),
              gen(srv, model='simulated-2')]
    assert len({a.key(msgs()), *(g.key(msgs()) for g in others)}) == 6


def test_identity_names_what_decides_the_answers_without_secrets(srv):
    rf = {'type': 'json_object'}
    ident = gen(srv, temperature=0.7, top_p=0.9, max_tokens=64, response_format=rf, server_kind='llama_cpp').identity
    assert ident == {'base_url': 'simulated on this machine', 'model': 'simulated', 'temperature': 0.7, 'top_p': 0.9, 'max_tokens': 64,
                     'response_format': ident['response_format'], 'server_kind': 'llama_cpp'}
    assert isinstance(ident['response_format'], str) and KEY not in json.dumps(ident)
    assert gen(srv).identity['response_format'] is None and gen(srv, top_p=0.5).identity != gen(srv, top_p=1).identity


@pytest.mark.parametrize('top_p,sent', [(None, False), (0, True), (0.8, True)])
def test_top_p_sent_only_when_set(srv, top_p, sent):
    run(complete_closing(gen(srv, top_p=top_p), msgs()))
    assert ('top_p' in srv.requests[0]) == sent and srv.requests[0].get('top_p') == top_p


def test_response_format_passed_through(srv):
    rf = {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': {'type': 'object'}}}
    run(complete_closing(gen(srv, response_format=rf, max_tokens=50, temperature=0.3), msgs()))
    body = srv.requests[0]
    assert (body['response_format'], body['max_tokens'], body['temperature'], body['model']) == (rf, 50, 0.3, 'simulated')


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
    with SimulatedServer(lambda req: req['messages'][-1]['content'], latency=0.2) as s:
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


# ---------------------------------------------------------------- money (issue 11.3, 11.4)

PAPER = {'price_in': 2.0, 'price_out': 2.0}  # the paper's $0.002 per 1K tokens


def test_prices_come_from_genai_prices(srv):
    g = gen(srv, model='gpt-4-turbo')  # not in the old hand-written table
    assert g.prices == (10.0, 30.0) and g.stats.note == ''
    assert gen(srv, model='gpt-3.5-turbo').prices == (0.5, 1.5)  # today's list price, not the paper's
    assert gen(srv, model='gpt-3.5-turbo', **PAPER).prices == (2.0, 2.0)


def test_paper_price_gives_paper_cost():
    with SimulatedServer(lambda req: 'word ' * 400, model='gpt-3.5-turbo') as s:  # 500 completion tokens
        c = run(complete_closing(gen(s, model='gpt-3.5-turbo', **PAPER), msgs()))
    assert c.cost_usd == pytest.approx((c.prompt_tokens + c.completion_tokens) * 0.002 / 1000) and c.completion_tokens == 500


def test_budget_with_unknown_price_is_refused(srv):
    with pytest.raises(ValueError, match=r"budget_usd=1.0 needs the price of model 'my-ft-model', and genai-prices has none: "
                                         r"give price_in and price_out \(USD per 1M tokens"):
        gen(srv, model='my-ft-model', budget_usd=1.0)
    assert gen(srv, model='my-ft-model', budget_usd=1.0, **PAPER).budget_usd == 1.0
    assert 'no price known' in gen(srv, model='my-ft-model').stats.note  # without a budget: a note, not an error


def test_missing_usage_is_estimated_and_said(srv):
    srv.responder = lambda req: {'choices': [{'message': {'role': 'assistant', 'content': 'x' * 400}, 'finish_reason': 'stop'}]}
    g = gen(srv, **PAPER)
    c = run(complete_closing(g, msgs()))
    assert (c.prompt_tokens, c.completion_tokens, g.stats.estimated) == (4, 100, 1)  # 'Be brief.hello': 14 characters
    assert c.cost_usd == pytest.approx(104 * 2 / 1e6) and 'estimated' in g.stats._repr_markdown_()


def test_budget_never_passed_with_64_in_flight():
    "Reservation: 200 requests, 64 in flight; the spend stays within the budget, and stops only when no request fits."
    with SimulatedServer(lambda req: 'word ' * 40, latency=0.05) as s:  # 50 completion tokens, as max_tokens allows
        g = gen(s, concurrency=64, max_tokens=50, budget_usd=1.0, price_in=1000.0, price_out=1000.0)
        res = run(g.complete_many([msgs(str(i)) for i in range(200)]))
    worst = g.worst_case(msgs('0'))
    sent = [r for r in res if r.ok]
    assert g.stats.usd <= 1.0 < g.stats.usd + worst and len(sent) == s.count == 18  # 53 tokens at $0.001 each: 18 fit in $1
    assert all(r.budget and 'request not sent' in r.reason for r in res if not r.ok) and g.stats.budget_stops == 200 - 18
    assert g.budget_spent and g.spent == pytest.approx(g.stats.usd)


def test_billed_failures_are_charged(srv):
    "An empty answer carried usage: it is paid even though it is retried; so is a reply cut by max_tokens."
    srv.inject('empty', 'truncate')
    g = gen(srv, sleep=Waits(), **PAPER)
    c = run(complete_closing(g, msgs()))
    empty = -(-len('Be brief.hello') // 4)  # the empty answer's prompt tokens
    assert (c.retries, c.finish_reason, srv.count, g.stats.truncated) == (1, 'length', 2, 1)
    assert c.cost_usd == pytest.approx((empty + c.prompt_tokens + c.completion_tokens) * 2 / 1e6) == pytest.approx(g.stats.usd)


def test_failed_request_carries_what_it_cost(srv):
    srv.inject('empty', 'empty')
    (f,) = run(gen(srv, max_retries=1, sleep=Waits(), **PAPER).complete_many([msgs()]))
    assert not f.ok and f.cost_usd == pytest.approx(2 * 4 * 2 / 1e6) and not f.fatal


def test_charge_counts_earlier_spend_against_the_budget(srv):
    g = gen(srv, max_tokens=10, budget_usd=0.001, **PAPER)
    g.charge(0.001 - g.worst_case(msgs()) / 2)
    assert g.budget_spent
    with pytest.raises(BudgetExceeded): run(complete_closing(g, msgs()))
    assert srv.count == 0 and g.stats.budget_stops == 1
    with pytest.raises(ValueError, match='usd=-1'): g.charge(-1)


def test_cache_hit_replays_its_original_cost(srv, tmp_path):
    first = gen(srv, cache=tmp_path/'c.sqlite', **PAPER)
    (a,) = run(first.complete_many([msgs()]))
    again = gen(srv, cache=tmp_path/'c.sqlite', budget_usd=1.0, **PAPER)
    (b,) = run(again.complete_many([msgs()]))
    assert (b.cached, b.cost_usd, srv.count) == (True, a.cost_usd, 1) and a.cost_usd > 0
    assert (again.stats.usd, again.stats.replayed_usd, again.spent) == (0.0, a.cost_usd, a.cost_usd)


# ---------------------------------------------------------------- failures that stop the run (issue 11.6, 11.7)

def test_quota_429_is_fatal_not_retried(srv):
    srv.inject('quota')
    (f,) = run(gen(srv, sleep=Waits()).complete_many([msgs()]))
    assert (f.status, f.retries, f.fatal, srv.count) == (429, 0, True, 1)
    assert f.reason.startswith('HTTP 429: You exceeded your current quota') and f.reason.endswith('not retried)')


def test_plain_429_and_5xx_are_not_fatal(srv):
    srv.inject('429:0', '429:0', '500', '500')
    res = run(gen(srv, max_retries=1, sleep=Waits()).complete_many([msgs('a'), msgs('b')]))
    assert [(r.ok, getattr(r, 'fatal', False)) for r in res] == [(False, False), (False, False)]


@pytest.mark.parametrize('fault,quoted', [('html', '<html><head><title>502 Bad Gateway'),
                                          ('error200', 'simulated error inside a 200 answer')])
def test_200_that_is_no_completion_quotes_the_server_and_is_retried(srv, fault, quoted):
    srv.inject(fault)
    g = gen(srv, sleep=Waits())
    c = run(complete_closing(g, msgs()))
    assert (c.text, c.retries, srv.count) == ('echo: hello', 1, 2)
    srv.inject(fault)
    (f,) = run(gen(srv, max_retries=0).complete_many([msgs('x')]))
    assert (f.status, f.fatal) == (200, False) and quoted in f.reason and 'empty' not in f.reason


def test_200_with_a_fatal_error_object_or_another_json(srv):
    srv.responder = lambda req: {'error': {'message': 'The model `simulated` does not exist', 'type': 'invalid_request_error', 'code': 'model_not_found'}}
    (f,) = run(gen(srv, sleep=Waits()).complete_many([msgs()]))
    assert (f.fatal, f.retries, srv.count) == (True, 0, 1) and 'The model `simulated` does not exist' in f.reason
    srv.responder = lambda req: {'object': 'list', 'data': []}
    (f,) = run(gen(srv, max_retries=0).complete_many([msgs()]))
    assert 'not a chat completion but \'{"object": "list"' in f.reason and not f.fatal


def test_truncated_answers_counted_and_shown(srv):
    srv.inject('truncate')
    g = gen(srv)
    c = run(complete_closing(g, msgs()))
    assert (c.finish_reason, g.stats.truncated) == ('length', 1)
    assert 'raise max_tokens' in g.stats._repr_markdown_()


# ---------------------------------------------------------------- settings (issue 11.8 and "Also")

@pytest.mark.parametrize('kw,name', [({'concurrency': 0}, 'concurrency'), ({'max_retries': -1}, 'max_retries'), ({'timeout': 0}, 'timeout'),
                                     ({'temperature': 2.5}, 'temperature'), ({'temperature': -0.1}, 'temperature'),
                                     ({'top_p': 1.5}, 'top_p'), ({'top_p': -0.1}, 'top_p'), ({'budget_usd': 0}, 'budget_usd'),
                                     ({'max_tokens': 0}, 'max_tokens'), ({'concurrency': 2.5}, 'concurrency'), ({'price_in': -1}, 'price_in')])
def test_impossible_values_refused_naming_the_parameter(srv, kw, name):
    with pytest.raises(ValueError, match=f'^{name}=.*: must be'): gen(srv, **kw)


def test_key_over_plain_http_to_another_host_warns_once_without_the_key(caplog):
    with caplog.at_level('WARNING', logger='datacreator_nb.generate'):
        Generator('m', base_url='http://models.example.org:8000/v1', api_key=KEY)
        Generator('m', base_url='https://models.example.org/v1', api_key=KEY)
        Generator('m', base_url='http://127.0.0.1:8000/v1', api_key=KEY)
        Generator('m', base_url='http://models.example.org:8000/v1')
    assert [r.getMessage() for r in caplog.records] == ['the API key is sent unencrypted (plain http://) to models.example.org']


def test_cache_closed_explicitly_and_reopened(srv, tmp_path):
    with gen(srv, cache=tmp_path/'c.sqlite') as g:
        assert [r.text for r in g.run([msgs('a')])] == ['echo: a']
        assert g.cache._db is None  # run() closed it
        assert [r.cached for r in g.run([msgs('a')])] == [True]
        run(g.complete_many([msgs('b')]))
        assert g.cache._db is not None
    assert g.cache._db is None


# ---------------------------------------------------------------- adaptive concurrency (issue 16.3)

class InFlight:
    "A responder that records how many requests the server had in flight as each one arrived."
    def __init__(self): self.server, self.seen = None, []
    def __call__(self, req):
        self.seen.append(self.server.in_flight)
        return 'ok'


def test_adaptive_limit_backs_off_when_latency_grows_with_load():
    r = InFlight()
    with SimulatedServer(r, latency=0.02, load_latency=0.005) as s:
        r.server = s
        run(gen(s, concurrency=64).complete_many([msgs(str(i)) for i in range(192)]))
        fixed, r.seen = max(r.seen), []
        g = gen(s, concurrency=64, adaptive=True)
        res = run(g.complete_many([msgs(f'a{i}') for i in range(192)]))
    assert all(x.ok for x in res) and fixed == 64
    assert max(r.seen) <= 32 and g.limit < 32  # latency triples at about 20 in flight (fewer with the client's own time); fixed: 64


def test_adaptive_limit_halves_on_429():
    r = InFlight()
    with SimulatedServer(r) as s:
        r.server = s
        s.fault_fn = lambda req, i: '429:0' if s.in_flight >= 8 else None  # a server that takes 8 at a time
        fixed = gen(s, concurrency=64, max_retries=100, sleep=Waits())
        run(fixed.complete_many([msgs(str(i)) for i in range(128)]))
        adaptive = gen(s, concurrency=64, max_retries=100, sleep=Waits(), adaptive=True)
        res = run(adaptive.complete_many([msgs(f'a{i}') for i in range(128)]))
    assert all(x.ok for x in res) and adaptive.stats.retries < fixed.stats.retries / 4
    assert adaptive.limit <= 16 and fixed.limit == 64
