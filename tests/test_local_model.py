"""The embedded model: found, served on loopback, stopped whatever happens, and the loop makes valid examples with it."""
import json, os, signal, subprocess, sys, time, urllib.request

import pytest
from openai import OpenAI

import datacreator_nb.local_model as local_model
from datacreator_nb.local_model import LocalModelError, ModelServer, bundled_gguf, free_port, serve_model
from datacreator_nb.prompt import messages, reply_schema, response_format
from datacreator_nb.task import TASK_TYPES, LabelSpace, Task, preset
from datacreator_nb.generate import Generator, grammar_schema, structured_fields
from datacreator_nb.create import create as create_examples

KNOWN_REASONS = {'not_json', 'truncated', 'not_object', 'no_json', 'missing_field', 'empty_field', 'wrong_type', 'answer_not_in_options',
                 'option_count', 'duplicate_options', 'options_changed', 'exact_duplicate', 'near_duplicate', 'shot_copy'}


def gone(pid: int, wait: float = 0.0) -> bool:
    "Whether the process `pid` has ended (or is a zombie nobody reaped yet) within `wait` seconds."
    deadline = time.monotonic() + wait
    while True:
        try: state = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]
        except FileNotFoundError: return True
        if state == 'Z': return True
        if time.monotonic() >= deadline: return False
        time.sleep(0.1)


def test_bundled_gguf_is_a_gguf_file():
    path = bundled_gguf()
    assert path.name == 'SmolLM2-135M-Instruct.Q4_1.gguf'
    assert path.read_bytes()[:4] == b'GGUF'


def test_missing_gguf_fails_before_starting_anything(tmp_path):
    with pytest.raises(FileNotFoundError, match='no GGUF model file'):
        ModelServer(tmp_path/'absent.gguf')


def test_bad_gguf_falls_back_then_fails_with_the_server_log_kept_and_no_process(tmp_path, capfd):
    bad = tmp_path/'bad.gguf'
    bad.write_bytes(b'this is not a model')
    srv = ModelServer(bad, timeout=30)
    with pytest.raises(LocalModelError, match='exited') as err:
        srv.start()
    said = capfd.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "native server" in said[0] and 'falling back' in said[0]  # one line, naming the native log
    native_log = said[0].split('log kept at ')[1].split(')')[0]
    assert 'invalid magic' in open(native_log).read()
    assert 'Failed to load model' in str(err.value)  # the tail of the fallback server's own log
    assert srv.engine == 'llama-cpp-python' and gone(srv.pid) and srv.log_path.exists() and str(srv.log_path) in str(err.value)
    os.unlink(native_log); srv.log_path.unlink()


def test_without_the_native_server_it_falls_back_in_one_line(monkeypatch, capfd):
    monkeypatch.setattr(local_model, 'native_available', lambda: False)
    with pytest.raises(LocalModelError, match='not installed'):
        ModelServer(native=True).start()
    with serve_model() as srv:
        assert srv.engine == 'llama-cpp-python'
        assert OpenAI(base_url=srv.base_url, api_key='not-needed').models.list().data[0].id == srv.model
    said = capfd.readouterr().err.strip().splitlines()
    assert len(said) == 1 and 'not installed' in said[0] and "falling back to llama-cpp-python's server" in said[0]
    assert not srv.log_path.exists()  # it started well: its log goes with it


def test_slots_must_be_a_positive_whole_number():
    with pytest.raises(ValueError, match='slots'): ModelServer(slots=0)


def slot_contexts(base_url: str) -> list[int]:
    "The context of each slot of the native server at `base_url`."
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(base_url.removesuffix('/v1') + '/slots', timeout=10) as r:
        return [s['n_ctx'] for s in json.load(r)]


def test_native_server_has_one_slot_per_parallel_request_each_with_its_context():
    with serve_model(slots=4, n_ctx=1024, native=True) as srv:
        assert srv.engine == 'native' and slot_contexts(srv.base_url) == [1024] * 4


def test_cpu_seconds_counts_the_server_process_work():
    with serve_model(slots=2, native=True) as srv:
        before = srv.cpu_seconds
        OpenAI(base_url=srv.base_url, api_key='not-needed').chat.completions.create(
            model=srv.model, messages=messages(preset('yesno_close'), n=1), max_tokens=40)
        assert srv.cpu_seconds > before >= 0
    assert srv.cpu_seconds is None


def test_cli_serve_model_takes_slots_and_context():
    port = free_port()
    cli = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'datacreator'), 'serve-model', '--port', str(port), '--slots', '2', '--n-ctx', '512'],
                           stdout=subprocess.PIPE, text=True)
    try:
        first = cli.stdout.readline()
        assert '2 requests at a time' in first, first
        assert slot_contexts(f'http://127.0.0.1:{port}/v1') == [512, 512]
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 0
    finally:
        if cli.poll() is None: cli.kill()


def test_the_server_dies_with_its_parent_even_when_started_from_a_thread():
    "A Jupyter kernel runs create() in a worker thread: the server must outlive that thread, and not the process."
    script = ("import threading, time\nfrom datacreator_nb.local_model import serve_model\nbox = []\n"
              "t = threading.Thread(target=lambda: box.append(serve_model())); t.start(); t.join()\n"
              "print(box[0].pid, box[0].log_path, flush=True)\ntime.sleep(600)")
    parent = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        pid, log = parent.stdout.readline().split()
        assert not gone(int(pid), wait=1)   # the thread that started it has ended, the server serves on
        parent.kill(); parent.wait()
        assert gone(int(pid), wait=10)
    finally:
        if parent.poll() is None: parent.kill()
        if 'log' in locals(): os.unlink(log)  # nobody was left to remove it


@pytest.mark.parametrize('interruption', [RuntimeError, KeyboardInterrupt])
def test_with_block_stops_the_server_whatever_ends_it(interruption):
    with pytest.raises(interruption):
        with serve_model() as srv:
            pid = srv.pid
            assert OpenAI(base_url=srv.base_url, api_key='not-needed').models.list().data[0].id == srv.model
            raise interruption()
    assert gone(pid) and not srv.running


def test_serve_forever_prints_the_url_and_stops_on_ctrl_c():
    port = free_port()
    cli = subprocess.Popen([sys.executable, '-c', f'from datacreator_nb.local_model import serve_forever; raise SystemExit(serve_forever(port={port}))'],
                           stdout=subprocess.PIPE, text=True)
    try:
        lines = [cli.stdout.readline() for _ in range(4)]  # the last one says Ctrl-C
        assert f'OPENAI_BASE_URL=http://127.0.0.1:{port}/v1' in ''.join(lines)
        assert "llama.cpp's native server, 8 requests at a time" in lines[0]
        server_pid = int(lines[0].split('pid ')[1].split(')')[0])
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 0
    finally:
        if cli.poll() is None: cli.kill()
    deadline = time.monotonic() + 10
    while not gone(server_pid) and time.monotonic() < deadline: time.sleep(0.1)
    assert gone(server_pid)


def test_structured_output_takes_each_server_kinds_form_for_every_preset():
    from llama_cpp.llama_grammar import SchemaConverter
    for name in TASK_TYPES:
        openai_rf = response_format(preset(name), 3)
        rf = structured_fields(openai_rf, 'llama_cpp')['response_format']
        assert rf['type'] == 'json_object' and 'pattern' not in json.dumps(rf)
        SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False).visit(rf['schema'], '')  # raises if not
        head, schema = structured_fields(openai_rf, 'llguidance')['grammar'].split(' %json ')
        assert head == '%llguidance {}\nstart:' and json.loads(schema) == {'x-guidance': {'whitespace_flexible': False}, **rf['schema']}
        assert structured_fields(openai_rf, 'openai') == {'response_format': openai_rf}
    with pytest.raises(ValueError, match='server_kind must be one of'): structured_fields(openai_rf, 'vllm')
    with pytest.raises(ValueError, match='server_kind must be one of'): Generator('m', base_url='http://127.0.0.1:9/v1', server_kind='vllm')


@pytest.mark.slow
def test_the_native_server_writes_compact_json_in_its_generators_form():
    "The embedded model's generators send the schema as a compact llguidance grammar: replies without indentation, of the asked shape."
    import asyncio
    from datacreator_nb.prompt import response_format as rf_of
    task = preset('yesno_close')
    with serve_model(slots=2, native=True) as srv:
        gen = Generator(base_url=srv.base_url, model=srv.model, api_key='not-needed', server_kind=srv.kind, max_tokens=600)
        replies = asyncio.run(gen.complete_many([messages(task, n=3)] * 2, [1, 2], response_format=rf_of(task, 3)))
    assert srv.kind == 'llguidance' and all(r.ok for r in replies)
    assert not any('\n' in r.text for r in replies)
    assert all(len(json.loads(r.text)['examples']) == 3 for r in replies)


def test_grammar_schema_keeps_a_property_named_pattern():
    s = {"type": "object", "properties": {"pattern": {"type": "string", "pattern": "\\S"}}, "required": ["pattern"],
         "enum": [{"pattern": "x"}]}
    assert grammar_schema(s) == {"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"],
                                 "enum": [{"pattern": "x"}]}


SENTIMENT = Task(name='sentiment', instruction='Decide whether a product review is positive, negative or neutral.',
                 example={'question': 'The battery died after two days and support never answered.',
                          'options': ['positive', 'negative', 'neutral'], 'answer': 'negative'},
                 label_space=LabelSpace.fixed(['positive', 'negative', 'neutral']))


@pytest.mark.slow
def test_the_real_model_creates_examples_that_pass_validation(tmp_path):
    "The creation loop through the real model: every kept example passes the task's checks, every other item has a reason."
    with serve_model() as srv:
        for task in (preset('yesno_close'), SENTIMENT, preset('mcqa_2')):
            gen = Generator(base_url=srv.base_url, model=srv.model, api_key='not-needed', server_kind=srv.kind, max_tokens=600)
            res = create_examples(task, 3, strategy='naive', generator=gen, per_request=3, parallel=1, max_rounds=3, progress=False)
            assert not res.failures, res.failures
            assert len(res.records) + sum(res.rejections.values()) > 0   # the model answered with items
            for rec in res.records:
                task.check(task.from_record(rec))                         # raises TaskError if not
            assert set(res.rejections) <= KNOWN_REASONS
            if task.label_space.kind == 'fixed':  # the grammar pins fixed options, so yes/no and sentiment yield examples
                assert len(res.records) >= 1
