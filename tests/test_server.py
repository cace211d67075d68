"""The simulated server over real HTTP: every fault as a client sees it, the fault rate, load latency, and the HTTP it speaks."""
import json, socket, threading, time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI

from datacreator_nb.server import FAULTS, Fault, SimulatedServer, varied_examples

echo = lambda req: f"echo: {req['messages'][-1]['content']}"


def client(srv, **kw): return OpenAI(base_url=srv.base_url, api_key='not-needed', max_retries=0, **{'timeout': 5, **kw})


def ask(c, text='hi'): return c.chat.completions.create(model='m', messages=[{'role': 'user', 'content': text}])


def raw(srv, data: bytes, wait: float = 2.0) -> bytes:
    "What the server sends back on one connection to `data`, until it closes or `wait` seconds pass."
    with socket.create_connection(('127.0.0.1', srv.port), timeout=wait) as s:
        s.sendall(data)
        got = b''
        try:
            while chunk := s.recv(65536): got += chunk
        except socket.timeout: pass
        return got


def post(body: bytes, path='/v1/chat/completions') -> bytes:
    return b'POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (path.encode(), len(body), body)


CHAT = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()


def test_quota_is_a_429_with_its_own_code_and_no_retry_after():
    with SimulatedServer(echo, faults=['quota']) as srv:
        with pytest.raises(openai.RateLimitError) as e: ask(client(srv))
    assert e.value.code == 'insufficient_quota' and e.value.body['type'] == 'insufficient_quota'
    assert 'retry-after' not in e.value.response.headers and 'quota' in e.value.message


def test_throttle_is_a_429_without_retry_after_and_429_has_one():
    with SimulatedServer(echo, faults=['throttle', '429:3']) as srv:
        c = client(srv)
        errors = []
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as e: ask(c)
            errors.append(e.value.response.headers.get('retry-after'))
    assert errors == [None, '3']


def test_html_and_error_object_come_with_status_200():
    with SimulatedServer(echo, faults=['html', 'error200']) as srv:
        c = client(srv)
        html, err = (c.chat.completions.with_raw_response.create(model='m', messages=[{'role': 'user', 'content': 'x'}]) for _ in range(2))
        assert (html.status_code, html.headers['content-type'].split(';')[0], html.text.lstrip()[:6]) == (200, 'text/html', '<html>')
        assert (err.status_code, set(json.loads(err.text))) == (200, {'error'})
        assert srv.served == ['html', 'error200']


def test_fault_rate_is_reproducible_from_its_seed_and_near_its_rate():
    def served(seed, rate=0.2, n=200):
        with SimulatedServer(echo, fault_rate=rate, fault_mix=['500', 'throttle'], seed=seed) as srv:
            c = client(srv)
            for i in range(n):
                try: ask(c, str(i))
                except openai.APIStatusError: pass
        return srv.served
    a, b, other = served(1), served(1), served(2)
    assert a == b and a != other
    assert 20 <= sum(f is not None for f in a) <= 60 and set(a) == {None, '500', 'throttle'}
    assert served(1, rate=0.0, n=20) == [None] * 20


def test_queued_faults_come_first_and_the_rate_adds_to_them():
    with SimulatedServer(echo, faults=['500'], fault_rate=1.0, fault_mix=['throttle']) as srv:
        c = client(srv)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError): ask(c)
    assert srv.served == ['500', 'throttle']


@pytest.mark.parametrize('kw,msg', [({'fault_rate': 1.5}, 'fault_rate must be between 0 and 1'),
                                    ({'fault_rate': 0.1, 'fault_mix': []}, 'non-empty fault_mix'),
                                    ({'fault_rate': 0.1, 'fault_mix': ['teapot']}, "unknown fault 'teapot'")])
def test_bad_fault_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg): SimulatedServer(echo, **kw)


def test_every_named_fault_is_accepted():
    assert {Fault(k).kind for k in FAULTS} == set(FAULTS) and {'html', 'error200', 'quota', 'throttle'} <= set(FAULTS)


def timed_batch(n, **kw) -> float:
    "Seconds for `n` requests sent together."
    with SimulatedServer(echo, **kw) as srv, ThreadPoolExecutor(n) as pool:
        c = client(srv)
        t0 = time.perf_counter()
        list(pool.map(lambda i: ask(c, str(i)), range(n)))
        return time.perf_counter() - t0


def test_latency_grows_with_load():
    flat, loaded = timed_batch(8, latency=0.1), timed_batch(8, latency=0.1, load_latency=0.1)
    assert flat < 0.6 and loaded > 0.7   # the last of 8 waits 0.1 + 7 x 0.1 s


def test_latency_counts_from_arrival_not_after_the_responders_work():
    async def busy(req):
        import asyncio
        await asyncio.sleep(0.3)
        return 'done'
    with SimulatedServer(busy, latency=0.4) as srv:
        t0 = time.perf_counter(); ask(client(srv)); took = time.perf_counter() - t0
    assert 0.35 < took < 0.65


def test_drop_closes_the_connection_without_a_byte():
    with SimulatedServer(echo, faults=['drop']) as srv:
        assert raw(srv, post(CHAT)) == b''
        srv.inject('drop')
        with pytest.raises(openai.APIConnectionError): ask(client(srv))


def test_keep_alive_two_answers_on_one_connection():
    with SimulatedServer(echo) as srv:
        got = raw(srv, post(CHAT) + post(CHAT), wait=1.0)
    assert got.count(b'HTTP/1.1 200') == 2 and srv.count == 2


def test_unknown_route_is_a_json_404_and_a_trailing_slash_is_fine():
    with SimulatedServer(echo) as srv:
        got = raw(srv, b'GET /v1/engines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        assert got.startswith(b'HTTP/1.1 404') and b'no route GET /v1/engines' in got
        assert b'"simulated"' in raw(srv, b'GET /v1/models/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')


def test_a_body_that_is_not_json_is_a_400_and_not_recorded():
    with SimulatedServer(echo) as srv:
        got = raw(srv, post(b'{oops').replace(b'Host: x', b'Host: x\r\nConnection: close'))
        assert got.startswith(b'HTTP/1.1 400') and b'not JSON' in got and srv.count == 0


def test_a_wrong_key_is_401_and_the_key_is_never_recorded():
    with SimulatedServer(echo, api_key='sk-right') as srv:
        with pytest.raises(openai.AuthenticationError): ask(OpenAI(base_url=srv.base_url, api_key='sk-wrong', max_retries=0))
        assert ask(OpenAI(base_url=srv.base_url, api_key='sk-right', max_retries=0)).choices[0].message.content == 'echo: hi'
        assert 'sk-right' not in json.dumps(srv.requests)


def test_stop_does_not_wait_for_a_slow_answer():
    srv = SimulatedServer(echo, faults=['slow:10']).start()
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(openai.APIConnectionError, ask, client(srv, timeout=20))))
    t.start(); time.sleep(0.3)
    t0 = time.perf_counter(); srv.stop(); stopped = time.perf_counter() - t0
    t.join(5)
    assert stopped < 2 and errors and not t.is_alive()


def test_the_server_says_it_is_simulated():
    with SimulatedServer(varied_examples(1), fault_rate=0.1) as srv:
        md = srv._repr_markdown_()
        assert 'simulated' in md and '10% of requests fail at random' in md
        assert [m.id for m in client(srv).models.list()] == ['simulated'] and ask(client(srv), 'Create 2').model == 'simulated'


def test_cli_serve_simulated_takes_fault_rate_mix_and_load_latency():
    import os, signal, subprocess, sys
    exe = os.path.join(os.path.dirname(sys.executable), 'datacreator')
    p = subprocess.Popen([exe, 'serve-simulated', '--fault-rate', '1', '--fault-mix', '503:0', '--latency', '0.4', '--load-latency', '0.4'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base_url, said = p.stdout.readline().strip(), p.stdout.readline()
        assert base_url.endswith('/v1') and '100% of requests fail at random' in said, (base_url, said)
        c = OpenAI(base_url=base_url, api_key='not-needed', max_retries=0, timeout=5)
        with pytest.raises(openai.InternalServerError) as e: ask(c)
        assert e.value.status_code == 503
        with ThreadPoolExecutor(3) as pool:  # 3 at once: the last one in waits 0.4 s + 2 x 0.4 s for the other two
            took = list(pool.map(lambda i: timed_failure(c), range(3)))
        assert max(took) > 1.0, took
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None: p.kill(); p.wait()


def timed_failure(c) -> float:
    "Seconds until a request to a server that fails every request gets its error."
    t0 = time.perf_counter()
    with pytest.raises(openai.APIStatusError): ask(c)
    return time.perf_counter() - t0
