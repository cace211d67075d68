"""A 2,000-example creation through random faults and three SIGKILLs: nothing lost, nothing twice, nothing paid twice.

The SIMULATED server (datacreator_nb.server, random well-formed examples, NOT a model) runs in its own process and
fails a random 10% of chat requests (429 with and without Retry-After, 500, a dropped connection, an answer slower
than the client's timeout, a truncated answer, an HTML page). It logs every chat answer it gives: when, the status,
the content and the token counts, and whether the client was still there to receive it.
`datacreator create` runs in a child process, is killed with SIGKILL at three random moments and each time started
again with the same command; the fourth run finishes. Then:
- lost: ids missing from 0..N-1, plus records whose question is in no answer the server gave;
- duplicates: ids or questions written twice;
- paid_twice: answers the server delivered and billed (200 with content) that the client neither kept in its
  request cache nor could have kept: an answer delivered after the killed run's last cache write (still in
  flight at the kill) is reported apart, as the unavoidable price of a SIGKILL, and so is an empty answer
  (retried on purpose);
- budget_overshoot_usd: a separate run with --budget-usd and prices; the spend the server billed (its own token
  counts x the prices) minus the budget, 0 when under it. It may pass the budget by at most one request's worst case.
Last line: {"examples": ..., "lost": ..., "duplicates": ..., "paid_twice": ..., "budget_overshoot_usd": ...}
"""
import argparse, json, os, random, signal, sqlite3, subprocess, sys, tempfile, time
from pathlib import Path

N, KILLS, RATE, SEED = 2000, 3, 0.1, 11
MIX = '429:0.05,throttle,500,drop,slow:3,truncate,html'  # 'slow' answers after 3 s, past the client's 1.5 s timeout
PRICE_IN, PRICE_OUT, BUDGET, MAX_TOKENS = 10.0, 10.0, 0.5, 1024  # USD per 1M tokens; USD
ARGS = ['--preset', 'yesno_close', '--strategy', 'random', '--per-request', '5', '--parallel', '16',
        '--concurrency', '16', '--timeout', '1.5', '--model', 'simulated', '--max-tokens', str(MAX_TOKENS), '--quiet']
CLI = [sys.executable, '-c', 'from datacreator_nb.cli import main; main()']

SERVER = r'''
import json, sys, threading, time
from datacreator_nb.server import SimulatedServer, varied_examples
log = open(sys.argv[1], 'a', buffering=1)

class LoggedServer(SimulatedServer):
    "The simulated server, logging each chat answer: time, status, content, tokens, and whether the client was gone."
    async def route(self, request):
        resp = await super().route(request)
        if request.path.rstrip('/') == '/v1/chat/completions':
            try: body = json.loads(resp.body)
            except (TypeError, ValueError): body = {}
            choice = (body.get('choices') or [{}])[0] if isinstance(body, dict) else {}
            log.write(json.dumps({'t': time.time(), 'status': resp.status, 'content': choice.get('message', {}).get('content'),
                                  'usage': body.get('usage') if isinstance(body, dict) else None,
                                  'gone': request.transport is None or request.transport.is_closing()}) + '\n')
        return resp

srv = LoggedServer(varied_examples(int(sys.argv[2])), latency=0.05, fault_rate=float(sys.argv[3]), fault_mix=sys.argv[4].split(','),
                   seed=int(sys.argv[2])).start()
print(srv.base_url, flush=True)
threading.Event().wait()  # until terminated
'''


def start_server(log: Path, rate: float):
    "The logged simulated server in its own process, and its base_url."
    p = subprocess.Popen([sys.executable, '-c', SERVER, str(log), str(SEED), str(rate), MIX], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def create(url: str, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([*CLI, 'create', '--n', str(N), '--base-url', url, '--out', str(out), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'OPENAI_API_KEY': 'not-needed'})


def answers_logged(log: Path) -> int: return log.read_text().count('\n') if log.exists() else 0


def killed_and_resumed(url: str, out: Path, log: Path, rng: random.Random) -> tuple[list, list, dict]:
    "Run, SIGKILL at KILLS random moments while requests are out (resuming each time with the same command), then finish."
    kills, notes = [], []
    for k in range(KILLS):
        p, before = create(url, out), answers_logged(log)
        while answers_logged(log) == before and p.poll() is None: time.sleep(0.02)  # its first answer: the run is sending
        time.sleep(rng.uniform(0.1, 2.0))
        if p.poll() is not None: notes.append(f'run {k + 1} ended (exit {p.returncode}) before its kill'); continue
        p.send_signal(signal.SIGKILL); p.wait(); kills.append(time.time())
        notes.append(f'run {k + 1} killed after {answers_logged(log) - before} answers')
    p = create(url, out)
    stdout, stderr = p.communicate(timeout=300)
    if p.returncode: raise SystemExit(f'the resumed run failed (exit {p.returncode}): {stderr.strip()[-2000:]}')
    return kills, notes, json.loads(stdout.strip().splitlines()[-1])


def cache_rows(out: Path) -> list[tuple[str, float]]:
    "(text, time written) of every answer in the run's request cache."
    path = next(out.parent.glob(out.name + '*.sqlite'), None)  # no cache: nothing kept
    if path is None: return []
    with sqlite3.connect(path) as db: return db.execute('SELECT text, created FROM answers').fetchall()


def read_log(log: Path) -> list[dict]:
    return [json.loads(l) for l in log.read_text().splitlines()]


def billed(e: dict) -> bool:
    "A 200 chat completion (empty or not): a real endpoint charges for it."
    return e['status'] == 200 and e['content'] is not None


def paid_accounting(log: list, rows: list, kills: list) -> dict:
    "Delivered billed answers: kept in the cache, empty (retried on purpose), in flight at a kill, or paid twice."
    kept = {text for text, _ in rows}
    last_write = [max([t for _, t in rows if t <= k], default=0.0) for k in kills]
    def in_flight_at_kill(t): return any(w < t <= k for w, k in zip(last_write, kills))
    out = {'delivered': 0, 'kept': 0, 'empty': 0, 'in flight at a kill': 0, 'client gone (timeout)': 0, 'paid_twice': 0}
    for e in filter(billed, log):
        kind = ('client gone (timeout)' if e['gone'] else 'empty' if e['content'] == '' else 'kept' if e['content'] in kept
                else 'in flight at a kill' if in_flight_at_kill(e['t']) else 'paid_twice')
        out[kind] += 1; out['delivered'] += not e['gone']
    return out


def record_checks(out: Path, log: list) -> dict:
    "Records, ids missing or repeated, questions repeated, and records no answer of the server contains."
    records = [json.loads(l) for l in out.read_text().splitlines()]
    ids = [r['_meta']['id'] for r in records]
    questions = [r['question'] for r in records]
    answered = '\n'.join(e['content'] for e in filter(billed, log))
    unbacked = sum(json.dumps(q)[1:-1] not in answered for q in questions)
    missing = len(set(range(N)) - set(ids))
    return {'records': len(records), 'missing ids': missing, 'records in no answer': unbacked, 'repeated ids': len(ids) - len(set(ids)),
            'repeated questions': len(questions) - len(set(questions)), 'ids contiguous': sorted(ids) == list(range(len(ids)))}


def budget_run(tmp: Path) -> dict:
    "A run stopped by --budget-usd: what the server billed (its token counts x the prices) against the budget."
    log = tmp/'budget.log'
    srv, url = start_server(log, RATE)
    try:
        p = create(url, tmp/'budget'/'out.jsonl', '--budget-usd', str(BUDGET), '--price-in', str(PRICE_IN), '--price-out', str(PRICE_OUT))
        stdout, stderr = p.communicate(timeout=300)
    finally: srv.terminate(); srv.wait()
    spent = sum(e['usage']['prompt_tokens'] * PRICE_IN / 1e6 + e['usage']['completion_tokens'] * PRICE_OUT / 1e6
                for e in read_log(log) if billed(e) and e['usage'])
    last = stdout.strip().splitlines()[-1] if stdout.strip() else stderr.strip()[-300:]
    return {'exit': p.returncode, 'billed_usd': spent, 'overshoot_usd': spent - BUDGET, 'client says': last[:300]}


def main():
    print('simulated OpenAI-compatible server (datacreator_nb.server, NOT a model), its own process, '
          f'{RATE:.0%} of chat requests failing at random ({MIX}); load average {os.getloadavg()[0]:.2f}')
    rng, t0 = random.Random(SEED), time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d); log, out = tmp/'server.log', tmp/'run'/'out.jsonl'
        srv, url = start_server(log, RATE)
        try: kills, notes, summary = killed_and_resumed(url, out, log, rng)
        finally: srv.terminate(); srv.wait()
        entries = read_log(log)
        checks, paid = record_checks(out, entries), paid_accounting(entries, cache_rows(out), kills)
        budget = budget_run(tmp)
    faults = sum(e['status'] != 200 or e['content'] is None for e in entries)
    print(f'\n{len(entries)} chat requests answered by the server, {faults} of them with an error or no completion; '
          f'{len(kills)} SIGKILLs; last run: {summary.get("examples")} examples, {summary.get("cached_replies")} replies from the cache')
    for n in notes: print('note:', n)
    print('\n| check | value |\n|---|---|')
    for k, v in {**checks, **{f'answers billed: {k}': v for k, v in paid.items()}}.items(): print(f'| {k} | {v} |')
    print(f'| budget run: budget USD | {BUDGET} |\n| budget run: billed by the server USD | {budget["billed_usd"]:.4f} |')
    print(f'| budget run: billed minus budget USD | {budget["overshoot_usd"]:+.4f} |')
    worst = (MAX_TOKENS + 1000) * max(PRICE_IN, PRICE_OUT) / 1e6
    print(f'| budget run: exit status | {budget["exit"]} |\n| one request worst case USD (about) | {worst:.4f} |')
    print(f'\nbudget run, the client\'s last line: {budget["client says"]}\nseconds: {time.perf_counter() - t0:.1f}')
    lost = checks['missing ids'] + checks['records in no answer']
    print(json.dumps({'examples': checks['records'], 'lost': lost, 'duplicates': checks['repeated ids'] + checks['repeated questions'],
                      'paid_twice': paid['paid_twice'], 'budget_overshoot_usd': round(max(0.0, budget['overshoot_usd']), 6)}))


if __name__ == '__main__':
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help, and no stray arguments
    main()
