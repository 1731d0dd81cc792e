"""`tailor eval --grader FILE.json`: the same grader code as the server's graders/run scores
every answer; a bad grader file fails before the model loads, naming the file and the field."""

import json

from fixedreply import save_fixed_reply

from tailor.cli import main


def test_every_answer_is_graded_and_the_mean_reward_joins_the_table(tmp_path, capsys):
    model = save_fixed_reply(tmp_path / "paris", "Paris")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(x) for x in [
        {"question": "Capital of France?", "answer": "Paris", "country": "France"},
        {"question": "Capital of Italy?", "answer": "Rome", "country": "Italy"},
        {"question": "Where is the Louvre?", "answer": "Paris", "country": "France"},
        {"question": "Capital of Spain?", "answer": "Madrid", "country": "Spain"}]) + "\n")
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps({"type": "multi", "name": "m", "calculate_output": "exact * short", "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "operation": "eq"},
        "short": {"type": "python", "name": "short",
                  "source": "def grade(sample, item):\n    return float(item['country'] != 'Spain')"}}}))
    out = tmp_path / "results.json"
    assert main(["eval", str(model), str(qa), "--dtype", "float32", "--max-new-tokens", "4", "--grader", str(grader),
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["conditions"][0]["rows"]
    assert [r["output"] for r in rows] == ["Paris"] * 4
    assert [r["grader"] for r in rows] == [1.0, 0.0, 1.0, 0.0] and not any(r["grader_error"] for r in rows)
    table = capsys.readouterr().out
    assert "grader" in table.splitlines()[0] and "0.500" in table


def test_a_bad_grader_file_is_one_clear_error(tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    grader = tmp_path / "g.json"
    grader.write_text(json.dumps({"type": "string_check", "name": "s", "input": "{{ sample.output_text }}",
                                  "reference": "a", "operation": "equals"}))
    assert main(["eval", "no-such-model-folder", str(qa), "--grader", str(grader)]) == 1
    err = capsys.readouterr().err
    assert "g.json" in err and "grader.operation" in err and "Traceback" not in err
