"""Rule files: the shipped defaults parse; bad files name the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from tierstream.sinks.errors import RuleFileError
from tierstream.sinks.rules import load_default_rules, load_rules, parse_rules

GOOD = """\
# comment
[[rule]]
name = "hit"
metric = "hit_rate"
labels = { tier = "@first" }
comparison = "<"
thresholds = { warning = 0.4, critical = 0.1 }
for = "90s"
hysteresis = 0.05

[[rule]]
name = "queue"
source = "metric"
metric = "queue.depth"
labels = { queue = "*" }
comparison = ">="
for = 0

[rule.thresholds]
info = 10
error = 100
"""


def test_defaults_are_the_issue_defaults() -> None:
    rules = {r.name: r for r in load_default_rules()}
    hit = rules["first-tier-hit-rate-low"]
    assert (hit.metric, hit.labels, hit.comparison) == ("hit_rate", {"tier": "@first"}, "<")
    assert hit.thresholds[0] == ("warning", 0.40)
    by_metric = {r.metric: r for r in rules.values()}
    assert by_metric["cache_effectiveness"].thresholds[0][1] == 0.70
    assert by_metric["latency_mean_ms"].thresholds[0][1] == 50.0
    assert by_metric["latency_p95_ms"].thresholds[0][1] == 100.0
    assert by_metric["error_rate"].thresholds[0][1] == 0.01
    assert by_metric["publisher_drop_rate"].source == "metric"


def test_good_file(tmp_path: Path) -> None:
    p = tmp_path / "rules.toml"
    p.write_text(GOOD)
    hit, queue = load_rules(p)
    assert hit.for_s == 90 and hit.thresholds == (("warning", 0.4), ("critical", 0.1))
    assert hit.breached(0.3) == "warning" and hit.breached(0.05) == "critical"
    assert hit.breached(0.4) is None
    assert not hit.cleared(0.44) and hit.cleared(0.45)
    assert queue.source == "metric" and queue.thresholds == (("info", 10.0), ("error", 100.0))
    assert queue.breached(10) == "info" and queue.line == 11


def rule(body: str) -> str:
    return '[[rule]]\nname = "r"\n' + body


BAD = [
    ("syntax", 'x = "a"\n[[rule]\nname = "r"\n', 2, "TOML syntax"),
    ("syntax-value", rule('metric = "hit_rate"\ncomparison = <\n'), 4, "TOML syntax"),
    (
        "unknown-metric",
        rule('metric = "hit_rat"\ncomparison = "<"\nthresholds = { warning = 0.4 }\n'),
        3,
        "unknown metric 'hit_rat'",
    ),
    (
        "bad-comparison",
        rule('metric = "hit_rate"\ncomparison = "=<"\nthresholds = { warning = 0.4 }\n'),
        4,
        "comparison must be one of",
    ),
    (
        "out-of-order-inline",
        rule(
            'metric = "hit_rate"\ncomparison = "<"\nthresholds = { warning = 0.2, error = 0.3 }\n'
        ),
        5,
        "thresholds out of order",
    ),
    (
        "out-of-order-table",
        rule(
            'metric = "latency_p95_ms"\ncomparison = ">"\n\n[rule.thresholds]\n'
            "warning = 100\ncritical = 50\n"
        ),
        8,
        "more severe threshold must be higher",
    ),
    (
        "negative-for",
        rule(
            'metric = "hit_rate"\ncomparison = "<"\nthresholds = { warning = 0.4 }\nfor = "-5s"\n'
        ),
        6,
        "'for' must not be negative",
    ),
    (
        "bad-duration",
        rule(
            'metric = "hit_rate"\ncomparison = "<"\nthresholds = { warning = 0.4 }\nfor = "5 min"\n'
        ),
        6,
        "'for' must look like",
    ),
    (
        "percent-not-fraction",
        rule(
            'metric = "error_rate"\ncomparison = ">"\nthresholds = { warning = 1 }\n'
            "hysteresis = 0\n"
        ).replace("warning = 1", "warning = 5"),
        5,
        "fraction in [0, 1]",
    ),
    (
        "unknown-key",
        rule('metric = "hit_rate"\ncomparison = "<"\nthreshold = { warning = 0.4 }\n'),
        5,
        "unknown key 'threshold'",
    ),
    (
        "unknown-severity",
        rule('metric = "hit_rate"\ncomparison = "<"\nthresholds = { major = 0.4 }\n'),
        5,
        "unknown severity 'major'",
    ),
    (
        "label-not-applicable",
        rule(
            'metric = "cache_effectiveness"\nlabels = { tier = "redis" }\n'
            'comparison = "<"\nthresholds = { warning = 0.4 }\n'
        ),
        4,
        "label 'tier' does not apply",
    ),
    (
        "missing-key",
        '\n\n[[rule]]\nname = "r"\nmetric = "hit_rate"\n',
        3,
        "missing 'comparison'",
    ),
]


@pytest.mark.parametrize(("text", "line", "phrase"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rule_file_names_file_line_and_problem(
    tmp_path: Path, text: str, line: int, phrase: str
) -> None:
    p = tmp_path / "alerts.toml"
    p.write_text(text)
    with pytest.raises(RuleFileError) as info:
        load_rules(p)
    err = info.value
    assert (err.path, err.line) == (str(p), line), str(err)
    assert phrase in err.problem
    assert str(err).startswith(f"{p}:{line}: ")


def test_duplicate_names_and_second_rule_lines() -> None:
    one = (
        '[[rule]]\nname = "a"\nmetric = "hit_rate"\ncomparison = "<"\n'
        "thresholds = { warning = 0.4 }\n"
    )
    with pytest.raises(RuleFileError) as info:
        parse_rules(one + "\n" + one, "f.toml")
    assert info.value.line == 8 and "duplicate rule name 'a'" in str(info.value)
    two = one + "\n" + one.replace('"a"', '"b"').replace('"hit_rate"', '"nope"')
    with pytest.raises(RuleFileError) as info:
        parse_rules(two, "f.toml")
    assert str(info.value).startswith("f.toml:9: ") and "unknown metric 'nope'" in str(info.value)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"missing\.toml: cannot read"):
        load_rules(tmp_path / "missing.toml")
