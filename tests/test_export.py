"""tunelab export and chat on tiny runs: merged equals adapter for every mergeable method, GGUF read back by
transformers agrees with the merged model, bad input is one line and exit 2 with nothing left behind."""

from __future__ import annotations

import json

import pytest
import torch

import tests.conftest as c
from tunelab.cli import main
from tunelab.export.build import export_run
from tunelab.export.source import held_out_probes, load_tuned, open_run
from tunelab.export.verify import logits_of
from tunelab.methods import METHODS

MERGEABLE = sorted(name for name, m in METHODS.items() if m.mergeable)
RUNS = [*MERGEABLE, "lora-a", "lora-b"]  # every run the tests ask for; its index is its seed


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    """A finished tiny-llama run per method (cached), trained hard enough that the tune moves the logits."""
    from tunelab.config import load_config
    from tunelab.train.run import run

    tmp = tmp_path_factory.mktemp("export")
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(24)]
    train, held = c.write_jsonl(tmp / "train.jsonl", rows[:20]), c.write_jsonl(tmp / "eval.jsonl", rows[20:])
    runs, failed = {}, {}

    def make(method: str, name: str = ""):
        key = name or method
        if key in failed:  # every test that needs this run fails with its first error, not a leftover directory
            raise failed[key]
        if key not in runs:
            config = load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama",
                                        f"output_dir={tmp / key}", f"method={method}", "train.learning_rate=1e-2",
                                        "train.max_steps=3", "train.batch_size=4", "train.max_length=64",
                                        "eval.max_new_tokens=4", "eval.forgetting_probe=false",
                                        "eval.few_shot_k=0", f"train.seed={RUNS.index(key)}"])  # its own, whatever the order
            try:
                runs[key] = run(config).run_dir
            except Exception as err:
                failed[key] = err
                raise
        return runs[key]

    return make


def base_logits(run_dir, ids):
    from transformers import AutoModelForCausalLM

    from tunelab.models import resolve_model

    return logits_of(AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random-llama")).eval(), ids)


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_checkpoint_computes_what_the_adapter_computes(make_run, method, tmp_path):
    run_dir = make_run(method)
    report = export_run(run_dir, "merged", tmp_path / "merged")
    check = report["checks"]["merged"]
    assert check["max_logit_difference"] <= 1e-4 and check["rows"] == 4
    assert json.loads((tmp_path / "merged" / "verification.json").read_text())["passed"] is True
    # the tune moved the model, so agreement above is not the base agreeing with itself
    tokenizer, tuned = load_tuned(open_run(run_dir), full_precision=True)
    ids = held_out_probes(open_run(run_dir), tokenizer, 1)[0].ids
    assert float((logits_of(tuned, ids) - base_logits(run_dir, ids)).abs().max()) > 1e-2
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert (tmp_path / "merged" / name).is_file(), name
    assert "<|im_start|>" in (tmp_path / "merged" / "chat_template.jinja").read_text()
    assert ("quantization_gap" in report["checks"]) == (method in ("qlora", "lora-int8"))


@pytest.mark.parametrize("method", ["qlora", "lora-int8"])
def test_a_merged_export_of_a_quantized_run_reports_its_quantization_gap(make_run, method, tmp_path):
    """The merge is onto a full-precision base; the run trained over a 4-bit (8-bit) one. Against the run's own
    model the export is measured, not assumed equal: logits, top-1 and answer loss, beside the two bases' gap."""
    from tunelab.export.verify import describe_check

    run_dir = make_run(method)
    gap = export_run(run_dir, "merged", tmp_path / "merged")["checks"]["quantization_gap"]
    assert gap["rows"] == 4 and gap["answer_positions"] > 0
    assert 0 < gap["max_logit_difference"] and 0 < gap["base_max_logit_difference"]
    assert 0.5 < gap["answer_top1_agreement"] <= 1 and 0.5 < gap["base_answer_top1_agreement"] <= 1
    # the export's loss on the answers is the run's own, give or take the quantization
    assert gap["answer_loss_export"] == pytest.approx(gap["answer_loss_run"], rel=0.05)
    source = open_run(run_dir)
    tokenizer, run_model = load_tuned(source)
    probe = held_out_probes(source, tokenizer, 1)[0]
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    start = len(probe.prompt_ids) - 1
    own = float((logits_of(run_model, probe.ids) - logits_of(exported, probe.ids))[start:-1].abs().max())
    assert own <= gap["max_logit_difference"] + 1e-6
    line = describe_check("quantization_gap", gap)
    assert "against the run's own model" in line and "information only" in line


def test_adapter_export_is_peft_format_with_a_model_card(make_run, tmp_path):
    run_dir = make_run("lora")
    report = export_run(run_dir, "adapter", tmp_path / "a")
    assert report["checks"]["adapter"]["max_logit_difference"] == 0.0
    out = tmp_path / "a"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    card = (out / "README.md").read_text()
    for needed in ("## Base model", "tiny-random-llama", "sha256", "## Held-out metrics", "AutoPeftModelForCausalLM",
                   "method: lora"):
        assert needed in card, needed
    assert report["bytes"] < (open_run(run_dir).summary["total_params"] * 4) / 2  # an adapter, not a model


def test_a_merged_export_loads_and_generates_in_a_venv_with_only_torch_and_transformers(make_run, tmp_path):
    import subprocess
    import sys

    export_run(make_run("lora"), "merged", tmp_path / "merged")
    venv = tmp_path / "plain"
    done = subprocess.run([sys.executable, str(c.REPO / "scripts" / "check_merged_export.py"), str(tmp_path / "merged"),
                           "--venv", str(venv), "--max-new-tokens", "6"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["same_as_tunelab_env"] is True
    present = {p.name.split("-")[0].lower() for p in next(venv.glob("lib/python*/site-packages")).iterdir()}
    assert {"torch", "transformers", "tokenizers", "safetensors"} <= present
    assert not present & {"tunelab", "peft", "trl", "accelerate", "datasets", "bitsandbytes"}


def test_gguf_read_back_by_transformers_agrees_with_the_merged_model(make_run, tmp_path):
    run_dir = make_run("lora")
    report = export_run(run_dir, "gguf", tmp_path / "g", quants=("f16", "q8_0"))
    f16, q8 = report["checks"]["f16"], report["checks"]["q8_0"]
    assert f16["top1_agreement"] >= 0.99 and f16["tokenizer_agreement"] == 1.0
    assert f16["greedy_prompts"] == 4 and f16["greedy_agreement"] is not None
    assert 0.9 <= q8["top1_agreement"] <= 1.0  # reported; Q8_0 rounds every weight
    for check in (f16, q8):  # the file computes exactly what its type's rounding of the merged model computes
        assert check["round_trip_max_logit_difference"] <= 1e-4 and check["passed"]
        assert 0 < check["answer_positions"] < check["positions"]
    from tunelab.export.verify import describe_check

    assert "(reported: the file type's own cost)" in describe_check("q8_0", q8)
    files = report["files"]
    assert files["q8_0"]["bytes"] < files["f16"]["bytes"]


def test_gguf_metadata_follows_llama_cpp(make_run, tmp_path):
    import gguf

    report = export_run(make_run("lora"), "gguf", tmp_path / "g", quants=("f32",))
    reader = gguf.GGUFReader(tmp_path / "g" / report["files"]["f32"]["file"])
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(fields["tokenizer.ggml.merges"].contents()) > 40000
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert report["checks"]["f32"]["top1_agreement"] == 1.0


def test_a_gguf_writer_defect_fails_the_round_trip_check_even_where_top1_survives(make_run, tmp_path, monkeypatch):
    from tunelab.export import gguf_file
    from tunelab.export.build import VerificationFailed

    real = gguf_file._add_tensor

    def drift(writer, name, data, quant):  # a writer that scales every norm by 1.01: a defect top-1 may not notice
        real(writer, name, data * 1.01 if data.ndim == 1 else data, quant)

    monkeypatch.setattr(gguf_file, "_add_tensor", drift)
    with pytest.raises(VerificationFailed):
        export_run(make_run("lora"), "gguf", tmp_path / "g", quants=("f32",))
    check = json.loads((tmp_path / "g" / "verification.json").read_text())["checks"]["f32"]
    assert check["round_trip_max_logit_difference"] > 1e-3 and not check["passed"]


def test_rotary_permutation_is_what_llama_cpp_expects():
    from tunelab.export.gguf_file import permute_rotary

    w = torch.arange(16.0).reshape(8, 2).numpy()  # 2 heads of 4 rows: halves [0,1 | 2,3] interleave to 0,2,1,3
    rows = permute_rotary(w, 2)[:, 0].tolist()
    assert rows == [0.0, 4.0, 2.0, 6.0, 8.0, 12.0, 10.0, 14.0]


def run_cli(*argv, capsys):
    code = main(list(map(str, argv)))
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(make_run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((make_run("lora") / "config.yaml").read_text())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    cases = [
        ((unfinished, "--format", "merged", "-o", tmp_path / "o1"), "has not finished"),
        ((tmp_path, "--format", "merged", "-o", tmp_path / "o2"), "not a run directory"),
        ((make_run("full"), "--format", "adapter", "-o", tmp_path / "o3"), "saves the whole model"),
        ((make_run("lora"), "--format", "merged", "-o", busy), "not an empty directory"),
        ((make_run("lora"), "--format", "gguf", "--quant", "q4_k", "-o", tmp_path / "o4"), "q4_k"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in cases:
        code, err = run_cli("export", *argv, capsys=capsys)
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_a_failed_verification_exits_1_and_says_so(make_run, tmp_path, capsys, monkeypatch):
    from tunelab.export import verify

    monkeypatch.setitem(verify.LOGIT_TOLERANCE, "merged", -1.0)
    code, err = run_cli("export", make_run("lora"), "--format", "merged", "-o", tmp_path / "m", capsys=capsys)
    assert code == 1 and "within tolerance" in err[-1]
    assert err[-2].startswith("merged: max logit difference ") and err[-2].endswith("(gate -1e+00): FAILED")
    assert json.loads((tmp_path / "m" / "verification.json").read_text())["passed"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no partial temp dir beside it


def test_chat_one_shot_streams_the_tuned_reply(make_run, capsys):
    from tunelab.export.pool import stream_reply

    run_dir = make_run("lora")
    code = main(["chat", str(run_dir), "-p", "Say the number 3.", "--max-new-tokens", "6"])
    printed = capsys.readouterr().out
    tokenizer, model = load_tuned(open_run(run_dir))
    pieces = list(stream_reply(model, tokenizer, [{"role": "user", "content": "Say the number 3."}], max_new_tokens=6))
    assert code == 0 and printed == "".join(pieces) + "\n" and len(pieces) >= 1


def test_adapter_set_switches_between_runs_on_one_base(make_run):
    from tunelab.export.pool import AdapterSet

    a, b = make_run("lora", "lora-a"), make_run("lora", "lora-b")
    pool = AdapterSet({"a": a, "b": b})
    tokenizer, _ = load_tuned(open_run(a))
    ids = held_out_probes(open_run(a), tokenizer, 1)[0].ids
    for name, run_dir in (("a", a), ("b", b)):
        pool.model.set_adapter(name)
        expected = logits_of(load_tuned(open_run(run_dir))[1], ids)
        assert float((logits_of(pool.model, ids) - expected).abs().max()) < 1e-5, name
    pool.model.set_adapter("a")
    with pool.model.disable_adapter():
        assert float((logits_of(pool.model, ids) - base_logits(a, ids)).abs().max()) < 1e-5
    assert float((logits_of(load_tuned(open_run(a))[1], ids) - logits_of(load_tuned(open_run(b))[1], ids)).abs().max()) > 1e-3
    replies = {name: "".join(pool.generate([{"role": "user", "content": "Say the number 3."}], adapter=name,
                                           max_new_tokens=4)) for name in ("a", "b", "base")}
    assert pool.active == "a" and len(replies) == 3
