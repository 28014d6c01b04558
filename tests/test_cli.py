"""longtail_seg/cli.py: the workflow scripts' shared parser pieces, their one-line errors, and running a workflow
script in this process."""

from __future__ import annotations

import pytest

from longtail_seg.cli import add_table_and_figure_outputs, exit_on, load_workflow_script, script_parser

DOC = """Title line.

    python workflow_scripts/x.py --a 1 \\
        --b 2
"""


def test_script_parser_keeps_the_usage_example_line_by_line():
    help_text = script_parser(DOC).format_help()
    assert "    python workflow_scripts/x.py --a 1 \\\n        --b 2" in help_text


def test_table_and_figure_outputs_are_both_required(capsys):
    parser = script_parser(DOC)
    add_table_and_figure_outputs(parser)
    args = parser.parse_args(["--out-csv", "t.csv", "--out-png", "t.png"])
    assert (args.out_csv, args.out_png) == ("t.csv", "t.png")
    with pytest.raises(SystemExit):
        parser.parse_args(["--out-csv", "t.csv"])
    assert "--out-png" in capsys.readouterr().err


def test_exit_on_turns_the_listed_errors_into_one_line_and_lets_others_through():
    with pytest.raises(SystemExit) as stop:
        with exit_on("category_ap: a.csv", ValueError, KeyError):
            raise KeyError("ap")
    assert str(stop.value) == "category_ap: a.csv: 'ap'"
    assert stop.value.__suppress_context__  # no traceback of the original error above the message
    with pytest.raises(TypeError):
        with exit_on("category_ap", ValueError):
            raise TypeError("not listed")
    with exit_on("category_ap", ValueError):
        done = True
    assert done


def test_load_workflow_script_runs_a_script_in_this_process(tmp_path):
    script = load_workflow_script("make_table")
    args = script.parse_args(["--rows", "[]", "--metrics", "m.json", "--out-csv", "t.csv", "--out-md", "t.md"])
    assert args.metrics == ["m.json"] and callable(script.main)


def test_load_workflow_script_names_the_scripts_there_are():
    with pytest.raises(FileNotFoundError, match="category_ap"):
        load_workflow_script("categroy_ap")
