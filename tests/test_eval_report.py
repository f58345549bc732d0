"""report.md and report.html: verdict first, plots inline, tables, examples; rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run with every piece of evidence switched on."""
    from tunelab.config import load_config
    from tunelab.train.run import run

    tmp = tmp_path_factory.mktemp("report")
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]} for i in range(24)]
    train, held = write_jsonl(tmp / "train.jsonl", rows[:12]), write_jsonl(tmp / "eval.jsonl", rows[12:])
    config = load_config(None, [f"data.train={train}", f"data.eval={held}", "model=tiny-random-llama",
                                f"output_dir={tmp / 'run'}", "train.batch_size=4", "train.max_steps=4",
                                "train.eval_steps=2", "train.logging_steps=1", "train.max_length=64",
                                "eval.max_new_tokens=6", "eval.few_shot_k=2", "train.early_stopping_patience=5"])
    return run(config)


def test_markdown_opens_with_the_verdict_and_shows_ten_examples(finished_run):
    text = (finished_run.run_dir / "report.md").read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[0] == "Verdict"
    assert sections[1:4] == ["Held-out results", "Cost per answer", "General ability (forgetting probe)"]
    verdict = text.split("## Verdict")[1].split("##")[0]
    assert "zero-shot" in verdict and "2-shot" in verdict and "forgetting" in verdict and "Fit:" in verdict
    assert text.count("**Prompt:**") == 10 and text.count("- base (2-shot):") == 10
    assert text.count("- base (2-shot retrieved):") == 10
    assert "| metric | zero-shot | 2-shot | 2-shot retrieved | tuned | change [95% CI] |" in text
    assert "| column | prompt tokens | generated tokens | s/answer one at a time | s/answer batched | peak memory MiB |" \
        in text


def test_summary_has_the_evidence_entries(finished_run):
    s = json.loads((finished_run.run_dir / "summary.json").read_text())
    assert {"before", "after", "zero_shot", "baselines", "comparisons", "forgetting", "diagnosis",
            "early_stopping"} <= set(s)
    # four LoRA steps barely move a random model: general ability cannot change by 10%, and the loss on
    # its own training rows falls far less than 10%, which is underfitting
    f = s["forgetting"]
    assert f["questions"] == 200 and abs(f["perplexity_change"]) < 0.01 and f["flagged"] is False
    assert f["perplexity_interval"][0] <= f["perplexity_change"] <= f["perplexity_interval"][1]
    assert s["train_sample"]["after"]["eval_loss"] > 0.9 * s["train_sample"]["before"]["eval_loss"]
    assert s["diagnosis"]["verdict"] == "underfitting"
    verdict = (finished_run.run_dir / "report.md").read_text().split("## Verdict")[1].split("##")[0]
    assert "No forgetting beyond the thresholds (+10% perplexity, -5 pts accuracy)" in verdict
    assert "Fit: underfitting: loss on train rows" in verdict


def test_every_compared_metric_has_its_interval_against_zero_shot_and_the_baseline(finished_run):
    s = json.loads((finished_run.run_dir / "summary.json").read_text())
    compared = {k for k in s["before"] if k != "eval_loss_se"}
    assert set(s["comparisons"]) == {"zero_shot", "few_shot", "retrieval"}
    assert set(s["comparisons"]["zero_shot"]) == compared  # eval loss, perplexity, exact match, token F1
    assert set(s["comparisons"]["few_shot"]) == set(s["baselines"]["few_shot"]["metrics"])
    assert set(s["comparisons"]["retrieval"]) == set(s["baselines"]["retrieval"]["metrics"])
    for name, c in s["comparisons"]["zero_shot"].items():
        assert c["difference"] == pytest.approx(s["after"][name] - s["before"][name])
        assert c["low"] <= c["difference"] <= c["high"] and c["rows"] == 12
    assert s["comparisons"]["zero_shot"]["exact_match"]["test"] == "McNemar exact"
    assert s["comparisons"]["zero_shot"]["token_f1"]["test"] == "paired bootstrap"


def test_html_is_self_contained(finished_run):
    page = (finished_run.run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count('src="data:image/png;base64,') == 2
    assert page.count("<tr>") >= 10 + 4  # ten examples and the metric rows


def test_confusion_matrix_for_classification(tmp_path):
    from tunelab.eval.report import render_markdown

    write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": "p", "reference": "yes", "before": "", "after": "yes"},
        {"prompt": "p", "reference": "yes", "before": "", "after": "no"},
        {"prompt": "p", "reference": "no", "before": "", "after": "maybe"}])
    summary = {"before": {"accuracy": 0.0}, "after": {"accuracy": 1 / 3}, "metrics": ["accuracy"],
               "train": {"steps": 1, "seconds": 1, "tokens": 1, "tokens_per_second": 1}, "model": "m",
               "method": "lora", "task": "sft", "trainable_params": 1, "total_params": 2}
    text = render_markdown(tmp_path, summary, [])
    assert "| reference \\ answer | no | yes | (other) |" in text
    assert "| no | 0 | 0 | 1 |" in text and "| yes | 1 | 1 | 0 |" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(finished_run, tmp_path):
    from PIL import Image

    url = (finished_run.run_dir / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-rendered="yes"' in root and 'data-images="2/2"' in root  # both plots decoded
    assert "data-errors" not in root  # no script or resource error
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2400)
    assert len(set(image.resize((120, 240)).getdata())) > 20  # text and plots, not a blank page


def test_the_verdict_names_what_tuning_made_worse_beside_the_headline_gain():
    """A summary with no intervals (written before they existed): the raw rule, 5 points."""
    from tunelab.eval.report import regression_sentence

    summary = {"metrics": ["pairwise_accuracy", "json_valid", "exact_match"],
               "before": {"pairwise_accuracy": 0.0, "json_valid": 0.75, "exact_match": 0.10, "eval_loss": 1.0},
               "after": {"pairwise_accuracy": 1.0, "json_valid": 0.0, "exact_match": 0.08, "eval_loss": 3.0}}
    # valid JSON lost 75 points; exact match lost 2 (within the 5-point margin); eval loss is not a percentage
    assert regression_sentence(summary) == "Worse after tuning: valid JSON 75.0% → 0.0% (-75.0 pts)."
    summary["after"]["json_valid"] = 0.72
    assert regression_sentence(summary) is None


def test_an_old_summary_without_intervals_still_reads(tmp_path):
    """summary.json from before intervals (no comparisons, one forgetting threshold): the verdict says so."""
    from tunelab.eval.report import comparison_header, comparison_rows, forgetting_rows, verdict

    old = {"metrics": ["exact_match"], "before": {"exact_match": 0.1}, "after": {"exact_match": 0.5},
           "baselines": {"few_shot": {"label": "3-shot", "metrics": {"exact_match": 0.3}}},
           "forgetting": {"perplexity_before": 10.0, "perplexity_after": 10.5, "perplexity_change": 0.05,
                          "accuracy_before": 1.0, "accuracy_after": 0.9, "accuracy_change": -0.1, "questions": 20,
                          "threshold": 0.1, "flagged": False, "remedies": []}}
    lines = verdict(old)
    assert lines[0] == ("Tuning helped: exact match 10.0% zero-shot, 30.0% 3-shot, 50.0% tuned (+40.0 pts over "
                        "zero-shot, +20.0 pts over 3-shot; no interval).")
    assert lines[1].startswith("No forgetting beyond the 10% threshold") and lines[1].endswith("(no interval).")
    assert comparison_header(old)[-1] == "change" and comparison_rows(old)[0][-1] == "+40.0 pts"
    assert forgetting_rows(old)[1][3] == "-10.0 pts"


def test_html_shows_code_not_backticks_and_marks_each_answer_right_or_wrong(tmp_path):
    from tunelab.eval.report_html import render_html

    samples = [{"prompt": "2+2?", "reference": "4", "before": "four", "after": " 4 "},
               {"prompt": "3+3?", "reference": "6", "before": "6", "after": "7"}]
    summary = {"before": {"exact_match": 0.5}, "after": {"exact_match": 0.5}, "metrics": ["exact_match"],
               "train": {"steps": 1, "seconds": 1, "tokens": 1, "tokens_per_second": 1}, "model": "tiny-random-llama",
               "method": "lora", "task": "sft", "trainable_params": 1, "total_params": 2}
    page = render_html(tmp_path, summary, samples)
    assert "<code>tiny-random-llama</code>" in page and "`" not in page.split("<script>")[0] + page.split("</script>")[1]
    cells = re.findall(r'<td class="(right|wrong)">([✓✗]) ([^<]*)</td>', page)
    assert cells == [("wrong", "✗", "four"), ("right", "✓", " 4 "), ("right", "✓", "6"), ("wrong", "✗", "7")]
    assert "✓ right, ✗ wrong, by exact match." in page
