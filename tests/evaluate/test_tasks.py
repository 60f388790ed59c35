"""`cptlab eval-tasks`: acc / acc_norm / per-choice log-likelihoods equal lm-evaluation-harness's on the same items.

Two model families with two tokenizer behaviours: llama-micro with the fixtures' tokenizer (adds no BOS: a context
is encoded bare, an empty context is conditioned on the prefix token) and gpt2-micro (48-token context: long
prompts are truncated from the left) with a tokenizer that prepends BOS (Llama-style, except for a text that
already starts with it). The items have trailing spaces, an empty context, a context starting with the BOS text,
non-ASCII text and choices of very different lengths (so acc and acc_norm pick differently).
"""

from __future__ import annotations

import json
import shutil

import pytest

from cptlab.cli import main
from cptlab.errors import CptlabError
from cptlab.evaluate.tasks import eval_tasks, read_task

ITEMS = [
    {"context": "The capital of France is", "choices": ["Paris", "a city far away in the north of Italy"], "gold": 1},
    {"context": "def add(x, y):\n    ", "choices": ["return x + y", "pass"], "gold": 0},
    {"context": "", "choices": ["yes", "no", "maybe not today"], "gold": 2},
    {"context": "Question: what is 2 + 2?\nAnswer:", "choices": ["4", "five hundred and twelve"], "gold": 0},
    {"context": "<|bos|>import json\n", "choices": ["json.loads(s)", "x"], "gold": 0},
    {"context": "naïve café — 東京 ", "choices": ["ünïcödé", "plain ascii words here"], "gold": 1},
    {"context": "Return the decoded object, raising a ValueError when the document is not valid JSON. " * 4,
     "choices": ["It raises.", "It returns None and logs a warning to the console."], "gold": 1},
    {"context": "for i in range(10):", "choices": [" print(i)", "\n    print(i)", "\tpass"], "gold": 1},
    {"context": "A tuple is", "choices": ["immutable", "mutable", "a kind of list that cannot change"], "gold": 0},
    {"context": "if x is None:", "choices": ["return", "raise TypeError('x must not be None')"], "gold": 1},
    {"context": "The opposite of hot is", "choices": ["cold", "warm"], "gold": 0},
    {"context": "JSON stands for", "choices": ["JavaScript Object Notation", "Java"], "gold": 0},
]

LM_EVAL_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
num_fewshot: {shots}
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    with open(d / "tiny_mc.jsonl", "w", encoding="utf-8") as f:
        for item in ITEMS:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    (d / "tiny_mc_2shot.yaml").write_text("name: tiny_mc_2shot\npath: tiny_mc.jsonl\nnum_fewshot: 2\n")
    lm = d / "lm_eval_tasks"
    lm.mkdir()
    (lm / "tiny_mc.yaml").write_text(LM_EVAL_TASK.format(name="lm_tiny_mc", path=d / "tiny_mc.jsonl", shots=0))
    (lm / "tiny_mc_2shot.yaml").write_text(LM_EVAL_TASK.format(name="lm_tiny_mc_2shot", path=d / "tiny_mc.jsonl",
                                                               shots=2))
    return d


@pytest.fixture(scope="module")
def gpt2_bos_dir(tmp_path_factory, tiny_tokenizer_dir):
    """gpt2-micro (context 48) saved with a copy of the tokenizer that prepends <|bos|> to every encoding."""
    from tokenizers import Tokenizer, processors

    from cptlab.model import build_preset, save_model
    from cptlab.tokens.tokenizer import load_tokenizer

    tok_dir = tmp_path_factory.mktemp("bos-tokenizer")
    for p in tiny_tokenizer_dir.iterdir():
        shutil.copy(p, tok_dir / p.name)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bos = raw.token_to_id("<|bos|>")
    raw.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                       special_tokens=[("<|bos|>", bos)])
    raw.save(str(tok_dir / "tokenizer.json"))
    tok = load_tokenizer(tok_dir)
    assert tok.encode("hi")[0] == bos and tok.encode("<|bos|>hi", add_special_tokens=False)[0] == bos
    model = build_preset("gpt2-micro", tok, seed=3, context=48)
    return save_model(model, tok, tmp_path_factory.mktemp("models") / "gpt2-bos")


def lm_eval_reference(model_dir, include_path, task: str) -> tuple[dict, list[list[float]]]:
    """lm-eval's own run (its HFLM loads the model dir itself): ({acc, acc_norm, ...}, per-item logliks)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=4, dtype="float32")
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True,
                                  task_manager=TaskManager(include_path=str(include_path), include_defaults=False))
    res = out["results"][task]
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return ({k.split(",")[0]: v for k, v in res.items() if "," in k},
            [[float(r[0]) for r in s["filtered_resps"]] for s in samples])


def check_same(ours: dict, rows: list[dict], ref: dict, ref_lls: list[list[float]]) -> None:
    assert ours["n"] == len(ref_lls) == len(ITEMS)
    assert ours["acc"] == ref["acc"] and ours["acc_norm"] == ref["acc_norm"]
    assert ours["acc_stderr"] == pytest.approx(ref["acc_stderr"]) and \
        ours["acc_norm_stderr"] == pytest.approx(ref["acc_norm_stderr"])
    for row, lls in zip(rows, ref_lls):
        assert row["loglikelihoods"] == pytest.approx(lls, rel=1e-5, abs=1e-5), row


@pytest.mark.parametrize("family", ["llama", "gpt2-bos"])
def test_acc_and_acc_norm_equal_lm_eval(family, tiny_model_dir, gpt2_bos_dir, task_dir):
    model_dir = tiny_model_dir if family == "llama" else gpt2_bos_dir
    result = eval_tasks(str(model_dir), [str(task_dir / "tiny_mc.jsonl")], device="cpu", batch_size=5)
    ours = result.to_dict()["tasks"]["tiny_mc"]
    assert any(r["pred"] != r["pred_norm"] for r in result.samples)  # acc and acc_norm differ somewhere
    if family == "gpt2-bos":
        assert result.settings["max_length"] == 48  # item 7's context is truncated from the left
    ref, ref_lls = lm_eval_reference(model_dir, task_dir / "lm_eval_tasks", "lm_tiny_mc")
    check_same(ours, result.samples, ref, ref_lls)


def test_fewshot_contexts_equal_lm_eval(tiny_model_dir, task_dir):
    """num_fewshot: 2 from the task's own items (the item itself left out), lm-eval's seeded sampler."""
    result = eval_tasks(str(tiny_model_dir), [str(task_dir / "tiny_mc_2shot.yaml")], device="cpu")
    ours = result.to_dict()["tasks"]["tiny_mc_2shot"]
    assert ours["config"]["num_fewshot"] == 2
    ref, ref_lls = lm_eval_reference(tiny_model_dir, task_dir / "lm_eval_tasks", "lm_tiny_mc_2shot")
    check_same(ours, result.samples, ref, ref_lls)


def test_lm_eval_task_name_gives_the_same_numbers(tiny_model_dir, task_dir, tmp_path):
    """Path (b): the lm-eval task by name (found through --include-path), on the model cptlab loaded."""
    samples = tmp_path / "samples.jsonl"
    result = eval_tasks(str(tiny_model_dir), f"{task_dir / 'tiny_mc.jsonl'},lm_tiny_mc", device="cpu",
                        include_path=task_dir / "lm_eval_tasks", samples=samples)
    data = result.to_dict()
    a, b = data["tasks"]["tiny_mc"], data["tasks"]["lm_tiny_mc"]
    assert (a["source"], b["source"]) == ("cptlab", "lm-eval")
    for key in ("acc", "acc_norm", "n"):
        assert a[key] == b[key], key
    assert a["acc_stderr"] == pytest.approx(b["acc_stderr"])
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    mine = [r["loglikelihoods"] for r in rows if r["task"] == "tiny_mc"]
    theirs = [r["loglikelihoods"] for r in sorted((r for r in rows if r["task"] == "lm_tiny_mc"),
                                                  key=lambda r: r["index"])]
    assert len(mine) == len(theirs) == len(ITEMS)
    for x, y in zip(mine, theirs):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-5)


def test_logliks_do_not_depend_on_batch_size_and_bf16_runs(tiny_model, tiny_tokenizer, task_dir):
    from cptlab.evaluate.choice_scoring import ChoiceScorer

    task = read_task(task_dir / "tiny_mc.jsonl")
    runs = []
    for bs in (1, 4, "auto"):
        _, rows = ChoiceScorer(tiny_model, tiny_tokenizer, batch_size=bs, device="cpu").evaluate(task)
        runs.append([ll for r in rows for ll in r["loglikelihoods"]])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5, abs=1e-5)
    assert runs[0] == pytest.approx(runs[2], rel=1e-5, abs=1e-5)
    _, rows = ChoiceScorer(tiny_model, tiny_tokenizer, precision="bf16", device="cpu").evaluate(task)
    assert [ll for r in rows for ll in r["loglikelihoods"]] == pytest.approx(runs[0], rel=0.05)  # bf16 autocast


def test_aliases_string_gold_and_limit(tiny_model_dir, tmp_path):
    path = tmp_path / "alias.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"query": "Hello", "choices": ["world", "there"], "gold": "there"},
        {"prompt": "Good", "choices": ["morning", "night"], "gold": 0},
        {"context": "Bye", "choices": ["now", "later"], "gold": 1},
    ]) + "\n\n")
    task = read_task(path)
    assert [it.gold for it in task.items] == [1, 0, 1] and task.items[0].context == "Hello"
    result = eval_tasks(str(tiny_model_dir), [str(path)], device="cpu", limit=2)
    assert result.tasks["alias"]["n"] == 2


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


GOOD = json.dumps({"context": "a", "choices": ["b", "c"], "gold": 0})


@pytest.mark.parametrize("bad,message", [
    ('{"choices": ["b", "c"], "gold": 0}', "missing field `context`"),
    ('{"context": "a", "gold": 0}', "missing field `choices`"),
    ('{"context": "a", "choices": ["b", "c"]}', "missing field `gold`"),
    ('{"context": "a", "choices": ["b"], "gold": 0}', "at least 2 choices"),
    ('{"context": "a", "choices": [], "gold": 0}', "at least 2 choices"),
    ('{"context": "a", "choices": ["b", ""], "gold": 0}', "`choices`[1]: empty string"),
    ('{"context": "a", "choices": "b c", "gold": 0}', "expected a list of strings"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 2}', "index 2 out of range"),
    ('{"context": "a", "choices": ["b", "c"], "gold": "d"}', "'d' is not one of the choices"),
    ('{"context": "a", "choices": ["b", "c"], "gold": true}', "field `gold`"),
    ('{"context": 7, "choices": ["b", "c"], "gold": 0}', "field `context`: expected a string"),
    ('{"context": "  ", "choices": ["b", "c"], "gold": 0}', "only whitespace"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 0', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_bad_items_name_file_and_line(tiny_model_dir, tmp_path, capsys, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n")  # the bad item is on line 3
    assert run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", str(path), "--device", "cpu"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:3:" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("content,where,message", [
    ("", ":1:", "empty task file"),
    ("\n  \n", ":1:", "empty task file"),
])
def test_empty_task_file(tiny_model_dir, tmp_path, capsys, content, where, message):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", str(path)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}{where}" in err and message in err


def test_bad_task_yaml_and_missing_file(tiny_model_dir, tmp_path, capsys):
    y = tmp_path / "t.yaml"
    y.write_text("path: nope.jsonl\nnum_fewshots: 2\n")
    assert run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", str(y)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert str(y) in err and "num_fewshots: unknown key" in err
    assert run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", str(tmp_path / "gone.jsonl")]) == 1
    assert "gone.jsonl: task file not found" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(CptlabError, match="only 1 example"):
        (tmp_path / "one.jsonl").write_text(GOOD + "\n" + GOOD + "\n")
        (tmp_path / "few.yaml").write_text("path: one.jsonl\nnum_fewshot: 2\n")
        read_task(tmp_path / "few.yaml")


def test_unknown_lm_eval_task_lists_close_names(tiny_model_dir, task_dir, capsys):
    code = run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", "lm_tiny_mcq",
                    "--include-path", str(task_dir / "lm_eval_tasks")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "lm_tiny_mcq: not a task file and not an lm-eval task" in err
    assert "lm_tiny_mc" in err and "Traceback" not in err


def test_cli_table_and_json(tiny_model_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "acc.json"
    code = run_cli(["eval-tasks", "--model", str(tiny_model_dir), "--tasks", str(task_dir / "tiny_mc.jsonl"),
                    "--device", "cpu", "--batch-size", "8", "--json", str(out), "--samples",
                    str(tmp_path / "s.jsonl")])
    assert code == 0
    data = json.loads(out.read_text())
    r = data["tasks"]["tiny_mc"]
    assert data["model"] == str(tiny_model_dir) and r["source"] == "cptlab" and r["n"] == len(ITEMS)
    assert set(r) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "source", "file"}
    assert data["settings"]["batch_size"] == 8 and data["settings"]["device"] == "cpu"
    stdout = capsys.readouterr().out
    assert "tiny_mc" in stdout and f"{r['acc']:.4f} ± {r['acc_stderr']:.4f}" in stdout
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == len(ITEMS)
