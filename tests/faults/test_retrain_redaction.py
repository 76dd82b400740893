"""The retrain flow's Prefect artifact (flows/retrain.py `_report`, the markdown of a retrain
that trained) names the tracking store with its password hidden."""

from __future__ import annotations

from flows.retrain import RetrainResult, _report


def test_retrain_report_redacts_the_tracking_password(params):
    result = RetrainResult(
        skipped=False, reason="drift", executed=["train"], metrics={"perplexity": 9.5}, run_id="r1"
    )
    text = _report(params, result, "the corpus drifted", "http://u:pw@h")
    assert "pw" not in text
    assert "`http://u:***@h`" in text and "MLflow parent run `r1`" in text
