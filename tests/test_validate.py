"Validation of raw model replies: extraction never raises, nothing invalid is accepted, every rejection has its reason."
import json, re

import pytest
from hypothesis import given, settings, HealthCheck, strategies as st

from datacreator_nb.task import preset, read_jsonl, TaskError
from datacreator_nb.validate import extract_objects, Validator, ExactIndex, normalise
from datacreator_nb.near_duplicates import DedupIndex

TASKS = ['mcqa_2', 'mcqa_5', 'yesno_open', 'yesno_close']

# --- extraction never raises ---------------------------------------------------------------------

JSONISH = st.lists(st.one_of(st.sampled_from(['{', '}', '[', ']', '"', ',', ':', '\\', '\n\n', '```json', 'true', '"Question"',
                                              '"Answer": "True"', '{"examples": [', ' ', '1']),
                             st.text(max_size=5)), max_size=60).map(''.join)

@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), JSONISH))
def test_extract_never_raises(text):
    objects, failures = extract_objects(text)
    assert all(isinstance(o, dict) for o in objects)
    assert all(isinstance(r, str) and isinstance(s, str) for r, s in failures)

def test_extract_deep_nesting_does_not_raise():
    for text in ['[' * 100_000, '{"a":' * 50_000, '[' * 5000 + '{"q": 1}' + ']' * 5000]:
        extract_objects(text)

# --- nothing that fails task.check is ever accepted ----------------------------------------------

KEYS = st.sampled_from(['question', 'Question', 'QUESTION', 'options', 'Options', 'choices', 'answer', 'Answer', 'label',
                        'Label', 'context', 'Context', 'extra'])
VALUES = st.one_of(st.text(max_size=12), st.sampled_from(['True', 'false', 'yes', 'A', 'B', ' ', '']), st.booleans(),
                   st.integers(-2, 6), st.none(), st.lists(st.one_of(st.text(max_size=8), st.sampled_from(['True', 'False']), st.integers()), max_size=6))
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=7)

@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TASKS), st.lists(OBJECTS, max_size=6), st.sampled_from(['array', 'lines', 'wrapped']))
def test_never_accepts_invalid(task_type, objs, layout):
    task = preset(task_type)
    reply = {'array': lambda: json.dumps(objs), 'lines': lambda: '\n\n'.join(map(json.dumps, objs)),
             'wrapped': lambda: 'Here:\n```json\n' + json.dumps({"examples": objs}) + '\n```'}[layout]()
    v = Validator(task)
    verdict = v.validate(reply)
    for ex in verdict.accepted: task.check(ex)
    assert len(verdict.accepted) + len(verdict.rejected) == len(objs) or not objs

@settings(max_examples=200)
@given(st.sampled_from(TASKS), OBJECTS)
def test_accepted_iff_check_passes(task_type, obj):
    task = preset(task_type)
    ex = normalise(task, obj)
    try: task.check(ex); valid = True
    except TaskError: valid = False
    verdict = Validator(task, shots=[]).validate(json.dumps(obj))
    assert bool(verdict.accepted) == valid

# --- a table of real-looking messy replies ------------------------------------------------------

def item(q, options=None, answer=None, context=None, keys=('Question', 'Context', 'Options', 'Answer')):
    "One object as a model writes it, with the given key spelling; None values are left out."
    return {k: v for k, v in zip(keys, (q, context, options, answer)) if v is not None}

CTX = "The town pool opens at 7am on weekdays and at 9am at weekends; it closes for cleaning every first Monday of the month."
MC2 = [item("How do you stop a wooden door from squeaking when it opens?", ["Rub soap or oil on the hinges.", "Paint the door handle red."], "Rub soap or oil on the hinges."),
       item("How can you make wet shoes dry faster overnight?", ["Stuff them with crumpled newspaper.", "Put them in the freezer."], "Stuff them with crumpled newspaper.")]
MC5 = [item("Where would you usually keep a carton of frozen peas at home?", ["freezer", "bookshelf", "garden", "bathtub", "car roof"], "freezer"),
       item("What would a person likely do after running a long race?", ["rest", "sing", "paint", "swim", "cook"], "rest")]
YO = [item("Does the pool open at 7am on Saturdays?", ["True", "False"], "False", CTX),
      item("Is the pool closed for cleaning once a month?", ["True", "False"], "True", CTX)]
YC = [item("Honey stored in a sealed jar can stay edible for many years.", ["True", "False"], "True"),
      item("Sound travels faster through air than through water at room temperature.", ["True", "False"], "False")]
GOOD = {'mcqa_2': MC2, 'mcqa_5': MC5, 'yesno_open': YO, 'yesno_close': YC}

def lines(*objs): return '\n\n'.join(map(json.dumps, objs))
def shot_copy(t):
    ex = preset(t).example
    return item(ex['question'], ex.get('options'), ex['answer'], ex.get('context'))
def one_word_changed(o):
    "A copy of `o` with one word of its question replaced."
    w = o['Question'].split(' ')
    return {**o, 'Question': ' '.join(w[:3] + ['really'] + w[4:])}
def shouting(o):
    "A copy of `o` in other case and spacing."
    return {k: ('  ' + v.upper().replace(' ', '   ').rstrip('?.') + ' ' if k == 'Question' else v) for k, v in o.items()}

def cases():
    for t, (a, b) in GOOD.items():
        yield t, 'fenced array with prose', f"Sure! Here you go:\n```json\n{json.dumps([a, b], indent=2)}\n```\nHope this helps.", 2, []
        yield t, 'blank-line format', lines(a, b), 2, []
        yield t, 'structured output', json.dumps({"examples": [a, b]}), 2, []
        yield t, 'lower-case keys, Label', json.dumps({**{k.lower(): v for k, v in a.items() if k != 'Answer'}, 'Label': a['Answer']}), 1, []
        yield t, 'truncated reply', lines(a) + '\n\n' + json.dumps(b)[:-25], 1, ['truncated']
        yield t, 'missing brace mid-reply', json.dumps(a)[:-1] + '\n\n' + json.dumps(b), 2, []
        yield t, 'trailing commas', json.dumps([a, b]).replace(']}', '],}').replace('}]', '},]'), 2, []
        yield t, 'one item not JSON', lines(a) + "\n\n{'Question': 'single quotes', 'Answer': 'x'}\n\n" + json.dumps(b), 2, ['not_json']
        yield t, 'prose only', "I'm sorry, I can't produce more examples.", 0, ['no_json']
        yield t, 'copy of the shot', lines(a, shot_copy(t)), 1, ['shot_copy']
        yield t, 'one word changed', lines(a, one_word_changed(a)), 1, ['near_duplicate']
        yield t, 'exact dup, other case/spacing', lines(a, shouting(a)), 1, ['exact_duplicate']
        yield t, 'empty question', lines({**a, 'Question': '  '}, b), 1, ['empty_field']
        yield t, 'missing answer', lines({k: v for k, v in a.items() if k != 'Answer'}, b), 1, ['missing_field']
        yield t, 'integer answer', lines({**a, 'Answer': 1}, b), 1, ['answer_not_in_options' if t.startswith('yesno') else 'wrong_type']
    for t in ('mcqa_2', 'mcqa_5'):
        a, b = GOOD[t]
        yield t, 'letter answer', lines({**a, 'Answer': '(B)'}), 1, []
        yield t, 'answer in other case', lines({**a, 'Answer': a['Answer'].upper() + ' '}), 1, []
        yield t, 'answer not in options', lines(a, {**b, 'Answer': 'something else entirely'}), 1, ['answer_not_in_options']
        yield t, 'wrong option count', lines(a, {**b, 'Options': b['Options'] + ['one more']}), 1, ['option_count']
        yield t, 'duplicate options', lines(a, {**b, 'Options': [b['Options'][0]] * len(b['Options'])}), 1, ['duplicate_options']
    for t in ('yesno_open', 'yesno_close'):
        a, b = GOOD[t]
        yield t, 'string "True" and "no"', lines({**a, 'Answer': 'True'}, {**b, 'Answer': 'no'}), 2, []
        yield t, 'JSON booleans, options omitted', lines({**{k: v for k, v in a.items() if k != 'Options'}, 'Answer': True}), 1, []
        yield t, 'changed fixed options', lines(a, {**b, 'Options': ['Yes', 'No']}), 1, ['options_changed']
        yield t, 'label neither true nor false', lines(a, {**b, 'Answer': 'Maybe'}), 1, ['answer_not_in_options']
    yield 'yesno_open', 'missing context', lines(YO[0], {k: v for k, v in YO[1].items() if k != 'Context'}), 1, ['missing_field']

CASES = list(cases())

@pytest.mark.parametrize('task_type,what,reply,n_accepted,reasons', CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_messy_replies(task_type, what, reply, n_accepted, reasons):
    task = preset(task_type)
    verdict = Validator(task).validate(reply)
    assert len(verdict.accepted) == n_accepted
    assert sorted(r for r, _ in verdict.rejected) == sorted(reasons)
    for ex in verdict.accepted:
        task.check(ex)
        assert set(ex) == set(task.example)

def test_answers_normalised():
    v = Validator(preset('mcqa_2'))
    a = MC2[0]
    ex, = v.validate(json.dumps({**a, 'Answer': 'b'})).accepted
    assert ex['answer'] == a['Options'][1]
    ex, = Validator(preset('yesno_close')).validate(json.dumps({**YC[0], 'Answer': ' yes '})).accepted
    assert ex['answer'] is True

# --- pool, resume and the report -----------------------------------------------------------------

def test_pool_spans_replies_and_resume(tmp_path):
    task = preset('mcqa_5')
    first = Validator(task)
    accepted = first.validate(json.dumps(MC5)).accepted
    assert len(accepted) == 2
    assert [r for r, _ in first.validate(json.dumps(MC5)).rejected] == ['exact_duplicate'] * 2
    path = tmp_path / 'data.jsonl'
    path.write_text(''.join(json.dumps({**task.to_record(ex), 'context': None}) + '\n' for ex in accepted))
    resumed = Validator(task)
    resumed.add_accepted(read_jsonl(path))
    verdict = resumed.validate(lines(shouting(MC5[0]), one_word_changed(MC5[1]), shot_copy('mcqa_5')))
    assert verdict.accepted == []
    assert sorted(r for r, _ in verdict.rejected) == ['exact_duplicate', 'near_duplicate', 'shot_copy']

def test_report_counts_every_item():
    v = Validator(preset('yesno_close'))
    v.validate(lines(*YC, {**YC[0], 'Options': ['Yes', 'No']}))
    v.validate(lines(*YC) + '\n\n{"Question": "cut')
    df = v.report()
    assert list(df.columns) == ['reason', 'count', 'share']
    assert dict(zip(df['reason'], df['count'])) == {'accepted': 2, 'exact_duplicate': 2, 'options_changed': 1, 'truncated': 1}
    assert abs(df['share'].sum() - 1) < 0.01
    assert re.search(r'\| accepted +\| +2 \|', v._repr_markdown_())

# --- the dedup index ------------------------------------------------------------------------------

SENTENCES = st.lists(st.lists(st.sampled_from("the a cat dog sat ran on under mat rug big small red blue today".split()),
                              min_size=0, max_size=12).map(' '.join), max_size=30)

@settings(max_examples=100)
@given(SENTENCES)
def test_batch_equals_one_at_a_time(texts):
    batch = DedupIndex().match(texts)
    one = DedupIndex()
    assert batch == [one.match([t])[0] for t in texts]

@settings(max_examples=100)
@given(SENTENCES)
def test_near_matches_are_verified(texts):
    idx = DedupIndex(threshold=0.7)
    kept = []
    for t, hit in zip(texts, idx.match(texts)):
        if hit is None: kept.append(t); continue
        kind, j = hit
        a, b = set(_shingles(t)), set(_shingles(kept[j]))
        assert (kind == 'exact' and _words(t) == _words(kept[j])) or len(a & b) / len(a | b) >= 0.7

def _words(t): return t.lower().split()
def _shingles(t):
    w = _words(t)
    return w + [f"{x} {y}" for x, y in zip(w, w[1:])]

@settings(max_examples=100)
@given(SENTENCES)
def test_exact_index_finds_what_the_near_index_calls_exact(texts):
    "Issue 12.3: the paper's exact check on its own (`near_dup=None`) is the near index's exact part, nothing more."
    near = [h if h and h[0] == 'exact' else None for h in DedupIndex(threshold=1.01).match(texts)]
    assert ExactIndex().match(texts) == near


def test_validator_without_near_duplicates_keeps_a_one_word_change():
    q = {"question": "Where would you most likely find a stapler on a busy weekday morning?", "options": ["office", "beach"], "answer": "office"}
    again = {**q, "question": q["question"].replace("busy", "quiet")}
    shout = {**q, "question": q["question"].upper()}
    for near_dup, reasons in ((0.7, ['exact_duplicate', 'near_duplicate']), (None, ['exact_duplicate'])):
        v = Validator(preset('mcqa_2'), near_dup=near_dup)
        assert sorted(r for r, _ in v.admit([q, again, shout], []).rejected) == reasons


def test_index_scales_to_a_batch():
    texts = [f"question number {i} about topic {i * 7919 % 1000} with filler words {i % 13}" for i in range(3000)]
    hits = DedupIndex().match(texts + [t.upper() for t in texts[:100]])
    assert hits[3000:] == [('exact', i) for i in range(100)]

def test_fixed_string_labels_and_empty_reply():
    from datacreator_nb.task import load_task, data_path
    v = Validator(load_task(data_path('tasks', 'sentiment.json')))
    verdict = v.validate('[{"Review": "Great kettle, boils fast and looks lovely on the counter.", "Label": " Positive"},'
                         ' {"review": "It is fine I suppose, nothing special about it.", "answer": "neutral"}]')
    assert [ex['answer'] for ex in verdict.accepted] == ['positive']
    assert [r for r, _ in verdict.rejected] == ['answer_not_in_options']
    assert [r for r, _ in v.validate('').rejected] == [r for r, _ in v.validate(None).rejected] == ['no_json']

# --- the paper's blank-line format without braces (issue 14.1) ------------------------------------

def bare(o, label=''):
    "An object as the paper's model sometimes writes it: `\"key\": value` lines, no braces, maybe after a label line."
    return label + ',\n'.join(f'{json.dumps(k)}: {json.dumps(v)}' for k, v in o.items())

def bare_cases():
    for t, (a, b) in GOOD.items():
        yield t, 'two bare blocks', bare(a) + '\n\n' + bare(b), 2, []
        yield t, 'bare after labels and prose', 'Here are 2 examples:\n\n' + bare(a, 'Example 1:\n') + '\n\n' + bare(b, 'Example 2:\n'), 2, []
        yield t, 'bare mixed with braces', json.dumps(a) + '\n\n' + bare(b) + '\n', 2, []
        yield t, 'bare with closing brace only', bare(a) + '}\n\n' + bare(b) + ',', 2, []
        yield t, 'bare with Python constants', bare(a).replace('"Answer": "True"', '"Answer": True').replace('"Answer": "False"', '"Answer": False') + '\n\n' + bare(b), 2, []
        yield t, 'bare, last one cut off', bare(a) + '\n\n' + bare(b)[:-15], 1, ['truncated']
        yield t, 'bare, one broken', bare(a).replace(',\n', '\n', 1) + '\n\n' + bare(b), 1, ['not_json']

BARE = list(bare_cases())

@pytest.mark.parametrize('task_type,what,reply,n_accepted,reasons', BARE, ids=[f"{c[0]}-{c[1]}" for c in BARE])
def test_bare_blocks(task_type, what, reply, n_accepted, reasons):
    test_messy_replies(task_type, what, reply, n_accepted, reasons)

def test_blank_line_inside_an_object_is_not_a_bare_block():
    text = '{\n  "Question": "Is ice cold?",\n\n  "Options": ["True", "False"],\n\n  "Answer": true\n}'
    assert extract_objects(text) == ([{"Question": "Is ice cold?", "Options": ["True", "False"], "Answer": True}], [])

# --- a lone surrogate is rejected, never written (issue 11.10) -------------------------------------

@pytest.mark.parametrize('escaped', [True, False], ids=['escape in the JSON text', 'surrogate in the HTTP body'])
def test_lone_surrogate_rejected_through_http(tmp_path, escaped):
    import asyncio
    from datacreator_nb.create import jsonl_text
    from datacreator_nb.generate import Generator
    from datacreator_nb.server import SimulatedServer
    reply = lines(YC[0], {**YC[1], 'Question': 'Is @ half an emoji?'}).replace('@', '\\ud83d' if escaped else '\ud83d')
    async def ask():
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x')
        try: return await g.complete([{'role': 'user', 'content': 'Create 2 new examples.'}])
        finally: await g.aclose()
    with SimulatedServer(lambda req: reply) as srv: text = asyncio.run(ask()).text
    task = preset('yesno_close')
    v = Validator(task)
    verdict = v.validate(text)
    assert [r for r, _ in verdict.rejected] == ['bad_unicode']
    assert len(verdict.accepted) == 1
    (tmp_path/'data.jsonl').write_text(jsonl_text([task.to_record(ex) for ex in verdict.accepted]), encoding='utf-8')
    assert re.search(r'\| bad_unicode +\| +1 \|', v._repr_markdown_()) and '\\ud83d' in verdict._repr_markdown_()


def test_ignore_leaves_a_shared_passage_out_of_the_duplicate_text():
    "Issue 15: questions about one given passage are compared on their own text, not rejected as near copies of each other."
    task = preset('yesno_open')
    passage = ' '.join(['The reef shelters many fish, and its coral grows slowly in warm clear water near the coast.'] * 2)
    qs = ['Does coral grow fast?', 'Is the water near the reef cold?', 'Do fish shelter in the reef?']
    reply = json.dumps([{"question": q, "context": passage, "options": ["True", "False"], "answer": False} for q in qs])
    assert [r for r, _ in Validator(task).validate(reply).rejected] == ['near_duplicate'] * 2
    v = Validator(task, ignore=('context',))
    assert len(v.validate(reply).accepted) == 3
    assert [r for r, _ in v.validate(json.dumps([{"question": qs[0] + ' ', "context": "Another text.", "options": ["True", "False"], "answer": True}])).rejected] == ['exact_duplicate']
