"""metrics.py: the one writer and reader of metrics.jsonl: records appended and read back, a torn last line
skipped, a resume's truncation, a repeated step."""

import json

from bertmath import metrics


def test_records_written_are_read_back_and_a_torn_line_is_skipped(tmp_path):
    log = metrics.MetricsLog(tmp_path)
    records = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "eval_loss": 4.5, "eval_accuracy": 0.1}]
    for record in records:
        log.write(record)
    log.close()
    assert [json.loads(line) for line in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()] == records
    with open(tmp_path / metrics.METRICS_FILE, "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of a line
    assert metrics.read_records(tmp_path) == records
    train_records, evals = metrics.read_metrics(tmp_path)
    assert train_records == records[:2] and evals == records[2:]
    assert metrics.read_records(tmp_path / "nowhere") == []


def test_truncate_after_keeps_the_records_up_to_the_step_and_drops_a_torn_line(tmp_path):
    lines = ['{"step": 1, "loss": 5.0}', '{"step": 2, "loss": 4.0}', '{"step": 2, "eval_loss": 4.5}',
             '{"step": 3, "loss": 3.0}', '{"step": "x"}', '[1, 2]', '{"step": 4, "lo']
    (tmp_path / metrics.METRICS_FILE).write_text("\n".join(lines))
    metrics.truncate_after(tmp_path, 2)
    assert (tmp_path / metrics.METRICS_FILE).read_text() == "".join(line + "\n" for line in lines[:3])
    metrics.truncate_after(tmp_path / "nowhere", 2)  # no file: nothing to do
    assert not (tmp_path / "nowhere").exists()


def test_read_metrics_keeps_the_last_record_of_a_repeated_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n'
                                            '{"step": 2, "loss": 3.0}\n{"step": 2, "eval_loss": 3.5, "eval_accuracy": 0.2}\n')
    train_records, evals = metrics.read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in train_records] == [(1, 5.0), (2, 3.0)]
    assert [r["eval_loss"] for r in evals] == [3.5]
