

def test_report_has_a_self_prediction_section(shared_cache, tmp_path) -> None:
    from remote_introspect.reporting.report import build_report

    build_report(shared_cache["cache"], tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    # One section per run recorded in the cache: (A, B) and (A with the plant removed, B).
    assert md.count("## Self-prediction:") == 2 and html.count("<h2>Self-prediction:") == 2
    assert "60/60 100.0%" in md and "self − best cross" in html
