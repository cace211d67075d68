"""Requests/s of `Generator.complete_many` against the local SIMULATED server (not a model) with 200 ms latency.

For each concurrency c, the ideal rate is c / latency; the ratio measured / ideal shows what the client and
server lose to overhead. Client overhead per request is measured apart, one request at a time with latency 0.
The table also shows the client process's CPU time per request at each concurrency: 64 replies that arrive
together queue behind that much CPU each. Cache disabled. The server runs in its own process (`serve_simulated`), as a real endpoint would.
The client is the `openai` AsyncOpenAI client; it sends over aiohttp when installed (`openai[aiohttp]`), else httpx2.
The 1-minute load average is printed first: other processes on the machine lower every ratio.
For reference (NOT the product path), a minimal HTTP/1.1 client written on asyncio streams sends the same
requests at concurrency 64 to the same server: the gap between its ratio and the Generator's is what the
client stack (openai SDK + transport + retries) costs, since the server and the latency are the same.
Adaptive concurrency (`Generator(adaptive=True)`): 512 requests to a simulated server whose latency grows with the
requests in flight (50 ms + 5 ms per other request, `load_latency`), and to one with a fixed 200 ms, at a fixed 8
and 64 in flight and adaptively up to 64: req/s, mean latency, retries and the limit it ends at.
Last line: {"ratio_at_64": ..., "overhead_ms": ..., "bare_ratio_at_64": ..., "adaptive_latency_cut": ...}
"""
import argparse, asyncio, json, os, statistics, subprocess, sys, time

from openai import DefaultAioHttpClient

from datacreator_nb.generate import Generator, http_client

LATENCY, LEVELS, ROUNDS, OVERHEAD_N = 0.2, (1, 8, 32, 64, 128), 8, 300
EXAMPLE = {'question': 'Penguins live wild in the Arctic.', 'options': ['True', 'False'], 'answer': False}


def messages(i):
    return [{'role': 'system', 'content': 'Create yes/no questions. Answer with a JSON array only.'},
            {'role': 'user', 'content': f'Here is the example:\n{json.dumps(EXAMPLE)}\n\nCreate 3 new examples ({i}).'}]


ADAPTIVE_N, ADAPTIVE_SETTINGS = 512, ({'concurrency': 8}, {'concurrency': 64}, {'concurrency': 64, 'adaptive': True})


def start_server(latency, load_latency=0.0):
    "A `serve_simulated` child process and its base_url."
    code = f'from datacreator_nb.server import serve_simulated; serve_simulated(latency={latency}, load_latency={load_latency})'
    p = subprocess.Popen([sys.executable, '-c', code],
                         stdout=subprocess.PIPE, text=True)
    url = p.stdout.readline().strip()
    print(f'server {url}: {p.stdout.readline().strip()}')
    return p, url


async def timed(gen, n, offset=0):
    "Seconds to complete `n` distinct requests."
    t0 = time.perf_counter()
    res = await gen.complete_many([messages(offset + i) for i in range(n)])
    assert all(r.ok for r in res), [r for r in res if not r.ok][:1]
    return time.perf_counter() - t0


async def throughput(url, c):
    "Requests/s at concurrency c, and the client process's CPU milliseconds per request meanwhile."
    async with Generator('simulated', base_url=url, concurrency=c, cache=None, max_retries=0) as gen:
        await timed(gen, c, 10**6)  # warm up: open c keep-alive connections
        n, cpu = c * ROUNDS, time.process_time()
        rate = n / await timed(gen, n)
        return rate, (time.process_time() - cpu) / n * 1000


async def bare_ratio(url, c):
    "Ratio of ideal for c keep-alive connections written by hand on asyncio streams (the server's ceiling)."
    host, port = url.split('//')[1].split('/')[0].split(':')
    async def post(conn, i):
        reader, writer = conn
        body = json.dumps({'model': 'simulated', 'messages': messages(i), 'temperature': 1.0}).encode()
        writer.write(b'POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\n\r\n%s' % (host.encode(), len(body), body))
        head = await reader.readuntil(b'\r\n\r\n')
        size = next(int(h.split(b':')[1]) for h in head.split(b'\r\n') if h.lower().startswith(b'content-length'))
        assert json.loads(await reader.readexactly(size))['choices']
    async def worker(conn, ids):
        for i in ids: await post(conn, i)
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(c)]
    await asyncio.gather(*(post(conn, 10**6 + k) for k, conn in enumerate(conns)))  # warm up
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(conn, range(k, c * ROUNDS, c)) for k, conn in enumerate(conns)))
    rate = c * ROUNDS / (time.perf_counter() - t0)
    for _, w in conns: w.close()
    return rate / (c / LATENCY)


async def overhead_ms(url):
    async with Generator('simulated', base_url=url, concurrency=1, cache=None, max_retries=0) as gen:
        await timed(gen, 20, 10**6)
        return await timed(gen, OVERHEAD_N) / OVERHEAD_N * 1000


async def adaptive_row(url, **settings):
    "ADAPTIVE_N requests through a Generator with `settings`: req/s, mean latency, retries, the limit it ends at."
    async with Generator('simulated', base_url=url, cache=None, max_retries=100, backoff=0.01, **settings) as gen:
        t0 = time.perf_counter()
        res = await gen.complete_many([messages(i) for i in range(ADAPTIVE_N)])
        rate = ADAPTIVE_N / (time.perf_counter() - t0)
        return {'settings': ', '.join(f'{k} {v}' for k, v in settings.items()), 'req/s': round(rate, 1),
                'mean latency s': round(statistics.mean(r.seconds for r in res if r.ok), 3), 'retries': gen.stats.retries, 'final limit': gen.limit}


def adaptive_table(procs) -> float:
    "Print adaptive against fixed concurrency on a server slowing with load and on a fixed-latency one; the latency adaptive saves under load."
    servers = [(name, per, start_server(lat, per)) for name, lat, per in (('50 ms + 5 ms per request in flight', 0.05, 0.005), ('200 ms whatever the load', LATENCY, 0.0))]
    procs.extend(p for _, _, (p, _) in servers)
    print('\n| server | settings | req/s | mean latency s | retries | final limit |\n|---|---|---|---|---|---|')
    latency = {}
    for name, per, (_, url) in servers:
        for kw in ADAPTIVE_SETTINGS[1:] if not per else ADAPTIVE_SETTINGS:
            row = asyncio.run(adaptive_row(url, **kw))
            latency[(per, row['settings'])] = row['mean latency s']
            print(f"| {name} | {' | '.join(map(str, row.values()))} |", flush=True)
    return round(1 - latency[(0.005, 'concurrency 64, adaptive True')] / latency[(0.005, 'concurrency 64')], 3)


def main():
    print('simulated OpenAI-compatible server (datacreator_nb.server, NOT a model), cache disabled')
    print(f'HTTP transport: {"aiohttp" if isinstance(http_client(60.0, 1), DefaultAioHttpClient) else "httpx2"}; '
          f'load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs')
    procs = []
    try:
        p, url = start_server(LATENCY); procs.append(p)
        rows = []
        print(f'\n| concurrency | requests | req/s | ideal req/s | ratio | client CPU ms/request |\n|---|---|---|---|---|---|')
        for c in LEVELS:
            rate, cpu_ms = asyncio.run(throughput(url, c))
            ideal = c / LATENCY
            rows.append((c, rate / ideal))
            print(f'| {c} | {c * ROUNDS} | {rate:.1f} | {ideal:.0f} | {rate / ideal:.3f} | {cpu_ms:.2f} |', flush=True)
        bare = asyncio.run(bare_ratio(url, 64))
        print(f'\nreference, not the product path: a minimal asyncio-streams client at concurrency 64 reaches '
              f'{bare:.3f} of ideal against the same server')
        p0, url0 = start_server(0.0); procs.append(p0)
        ms = asyncio.run(overhead_ms(url0))
        print(f'\nround trip per request with latency 0, one at a time (client + local server): {ms:.2f} ms')
        cut = adaptive_table(procs)
    finally:
        for p in procs: p.terminate(); p.wait()
    print(json.dumps({'ratio_at_64': round(dict(rows)[64], 4), 'overhead_ms': round(ms, 3), 'bare_ratio_at_64': round(bare, 4), 'adaptive_latency_cut': cut}))


if __name__ == '__main__':
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help, and no stray arguments
    main()
