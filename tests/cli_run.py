"""Running ``edgedl`` in the test's own process, and reading its one error line: shared by the
tests that pin what a command says on bad input."""

import pytest

from edgedl.cli.main import main


def run_cli(capsys, *args):
    """Run ``edgedl ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def the_error(code, err) -> str:
    """The one ``error:`` line of a failed command (asserting there is exactly one and no traceback)."""
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
