import json

from connbalance.agent.intake import parse_downward_annotations
from connbalance.model import DRAIN_ANNOTATION


def go_quote(value: str) -> str:
    # What the kubelet writes: strconv.Quote, which escapes like JSON for this input.
    return json.dumps(value, ensure_ascii=False)


def test_the_downward_api_file_yields_the_drain_annotation_verbatim():
    request = {"id": "x1", "count": 3, "policy": "ns/web", "windowSeconds": 2}
    text = (
        f'app.kubernetes.io/name="auth"\n'
        f"{DRAIN_ANNOTATION}={go_quote(json.dumps(request))}\n"
        'kubernetes.io/config.seen="2026-11-30T07:00:00Z"\n'
    )
    parsed = parse_downward_annotations(text)
    assert json.loads(parsed[DRAIN_ANNOTATION]) == request
    assert parsed["app.kubernetes.io/name"] == "auth"


def test_go_escapes_for_control_and_unicode_characters_are_undone():
    parsed = parse_downward_annotations('note="tab\\there\\nline \\u00e9 \\x41 \\\\ \\""\n')
    assert parsed["note"] == 'tab\there\nline \u00e9 A \\ "'


def test_lines_that_are_not_key_equals_quoted_value_are_ignored():
    assert parse_downward_annotations("garbage\nkey=unquoted\n\n") == {}
