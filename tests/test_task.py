"""Tasks and prompts: bad task input is refused naming the field or file, and examples render canonically (issue 11)."""
import asyncio, json

import pytest

from datacreator_nb.generate import Generator
from datacreator_nb.prompt import messages
from datacreator_nb.server import SimulatedServer, varied_examples
from datacreator_nb.task import LabelSpace, Task, TaskError, load_task, preset


def write(tmp_path, spec, name='task.json'):
    (p := tmp_path/name).write_text(json.dumps(spec, indent=1))
    return p


# --- 11.5: a re-read example renders to the identical prompt, so a resumed run hits its cache -----

def test_key_order_does_not_change_the_prompt():
    task = preset('mcqa_5')
    as_written = {k: task.example[k] for k in reversed(task.example)}      # the model wrote its keys backwards
    re_read = task.from_record(task.to_record(as_written))                 # what resume reads back from disk
    assert list(as_written) != list(re_read)
    assert messages(task, [as_written]) == messages(task, [re_read])
    extra = {'zeta': 1, **as_written, 'alpha': 2}                          # unknown keys: after the task's, sorted
    assert '"answer": ' in messages(task, [extra])[1]['content'].split('"alpha"')[0]


def test_resume_prompt_hits_the_request_cache(tmp_path):
    "Through the simulated server: the rebuilt prompt of a resumed round is answered from the cache, nothing is paid twice."
    task = preset('yesno_close')
    as_written = {k: task.example[k] for k in reversed(task.example)}
    re_read = task.from_record(task.to_record(as_written))
    async def ask(ex):
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x', cache=tmp_path/'cache.sqlite')
        try: return await g.complete(messages(task, [ex], n=2)), g.stats
        finally: await g.aclose()
    with SimulatedServer(varied_examples(seed=1)) as srv:
        first, _ = asyncio.run(ask(as_written))
        again, stats = asyncio.run(ask(re_read))
        assert srv.count == 1 and stats.cache_hits == 1
        assert again.text == first.text


# --- "also" items: the answer and options keys, a quote in a key, a non-UTF-8 file ------------------

def test_example_without_answer_is_refused(tmp_path):
    p = write(tmp_path, {'task_type': 'yesno_close', 'example': {'question': 'Is ice cold?', 'options': ['True', 'False']}})
    with pytest.raises(TaskError, match=r"task.json: field 'example.answer': missing: the example must hold its answer"):
        load_task(p)
    with pytest.raises(TaskError, match=r"field 'example.label'"):
        Task('t', 'Tag it.', {'text': 'hi', 'answer': 'x'}, LabelSpace.fixed(['x', 'y']), answer_key='label', options_key=None)


def test_per_example_task_without_options_is_refused(tmp_path):
    p = write(tmp_path, {'task_type': 'mcqa_2', 'example': {'question': 'Which is hot?', 'answer': 'fire'}})
    with pytest.raises(TaskError, match=r"field 'example.options': missing: a per-example label space needs"):
        load_task(p)
    with pytest.raises(TaskError, match=r"field 'options_key'"):
        Task('t', 'Pick one.', {'question': 'Q?', 'answer': 'a'}, LabelSpace.per_example(2), options_key=None)


def test_key_with_a_quote_names_the_field():
    task = Task('t', 'Tag it.', {"it's": 'a text', 'answer': 'x'}, LabelSpace.fixed(['x', 'y']), options_key=None)
    with pytest.raises(TaskError, match=r"field 'it's': 'it's' is a required property|field 'it's': \"it's\" is a required"):
        task.check({'answer': 'x'})
    with pytest.raises(TaskError, match=r"field 'o'k'"):
        task.check({"it's": 'fine', 'answer': 'x', "o'k": 1})


def test_non_utf8_task_file_names_the_file(tmp_path):
    (p := tmp_path/'latin.json').write_bytes('{"task_type": "yesno_close", "name": "café"}'.encode('latin-1'))
    with pytest.raises(TaskError, match=r"latin.json: not UTF-8 text \(byte 0xe9 at offset 41\)"):
        load_task(p)


def test_lone_surrogate_in_the_example_is_refused():
    ex = json.loads('{"question": "Is \\ud83d an emoji?", "options": ["True", "False"], "answer": true}')
    with pytest.raises(TaskError, match=r"field 'example.question': not valid Unicode"):
        Task('t', 'Yes/no.', ex, LabelSpace.yes_no())
