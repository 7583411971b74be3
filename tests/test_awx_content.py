"""The AWX content: execution environment definition, collection requirements, and the job
templates, surveys and schedules that playbooks/awx_setup.yml creates.

ansible-lint checks the module arguments against the installed awx.awx collection. These tests
check what lint cannot: surveys are typed and bounded, schedules are well-formed recurrence
rules, and the files that the definitions name exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# Question types of an AWX survey (awx/main/models/mixins.py, SurveyJobTemplateMixin).
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


class PlaybookLoader(yaml.SafeLoader):
    """A YAML loader that reads Ansible's !unsafe tag as a plain string."""


PlaybookLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def setup_play() -> dict[str, Any]:
    return yaml.load((REPO / "playbooks/awx_setup.yml").read_text(), Loader=PlaybookLoader)[0]  # noqa: S506


def test_execution_environment_files_exist() -> None:
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    dependencies = definition["dependencies"]

    assert definition["version"] == 3
    for key in ("galaxy", "python", "system"):
        assert (REPO / dependencies[key]).is_file(), dependencies[key]
    assert "ansible-core>=2.19" in dependencies["ansible_core"]["package_pip"]


def test_python_requirements_match_runtime() -> None:
    runtime = (REPO / "requirements.txt").read_text()
    execution_environment = (REPO / "requirements-ee.txt").read_text()

    for package in ("requests", "psycopg"):
        assert package in execution_environment
    assert "requests" in runtime


def test_collection_requirements_name_awx() -> None:
    requirements = yaml.safe_load((REPO / "collections/requirements.yml").read_text())

    assert [item["name"] for item in requirements["collections"]] == ["awx.awx"]


def test_job_templates_cover_schedules() -> None:
    templates = setup_play()["vars"]["awx_setup_job_templates"]
    scheduled = {template["playbook"]: template["rrule"] for template in templates if "rrule" in template}

    assert scheduled["report.yml"].startswith("RRULE:FREQ=MONTHLY")
    assert any(template["job_type"] == "check" for template in templates)
    rules = [template["rrule"] for template in templates if "rrule" in template]
    assert "RRULE:FREQ=DAILY;INTERVAL=1" in rules
    assert any(rule.startswith("RRULE:FREQ=WEEKLY") for rule in rules)
    for template in templates:
        assert (REPO / template["playbook"]).is_file(), template["playbook"]
        if "rrule" in template:
            assert re.fullmatch(r"RRULE:FREQ=(DAILY|WEEKLY|MONTHLY);INTERVAL=1(;[A-Z]+=[A-Z0-9,]+)*", template["rrule"])
            assert re.fullmatch(r"\d{6}", template["time"])


def test_reclaim_only_in_reclaim_templates() -> None:
    templates = setup_play()["vars"]["awx_setup_job_templates"]

    for template in templates:
        reclaim = template["extra_vars"].get("archive_reclaim", False)
        assert reclaim == ("reclaim" in template["name"]), template["name"]


def test_survey_questions_typed_and_bounded() -> None:
    play_vars = setup_play()["vars"]
    questions = [play_vars[name] for template in play_vars["awx_setup_job_templates"] for name in template["survey"]]

    assert questions
    for question in questions:
        assert question["type"] in SURVEY_TYPES
        assert question["variable"].startswith(("orthanc_archive_", "orthanc_reclaim_"))
        assert question["required"] is True
        if question["type"] == "integer":
            assert isinstance(question["default"], int)
            assert question["min"] <= question["default"] <= question["max"]
