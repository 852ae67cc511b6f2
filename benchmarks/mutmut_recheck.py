"""Re-check named mutmut mutants against a few test files (docs/mutation.md, "After" counts).

Uses mutmut's own mechanism: with ``MUTANT_UNDER_TEST=<name>`` the trampolines in
``mutants/src`` run that mutant. The test files are collected once; each mutant runs them
(setup, call, teardown) until the first failure. Run from the repository root after a
``mutmut run`` has created ``mutants/``::

    python benchmarks/mutmut_recheck.py NAMES_FILE OUT_FILE tests/test_losses_mutants.py ...

``NAMES_FILE`` holds one mutant name per line (from ``mutmut results``); ``OUT_FILE`` gets
``killed <name>`` or ``SURVIVED <name>`` lines.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any


def main(argv: list[str]) -> None:
    """Copy the test files into ``mutants/``, then check every named mutant."""
    root = os.getcwd()
    with open(argv[0]) as fh:
        names = [line.strip() for line in fh if line.strip()]
    tests = argv[2:]
    for t in tests:
        shutil.copy2(t, os.path.join("mutants", t))
    os.chdir("mutants")
    sys.path.insert(0, os.path.abspath("src"))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != os.path.join(root, "src")]
    import pytest
    from _pytest.runner import runtestprotocol

    with open(argv[1], "w") as out:

        class Loop:
            def pytest_runtestloop(self, session: Any) -> bool:
                os.environ["MUTANT_UNDER_TEST"] = ""
                for name in names:
                    os.environ["MUTANT_UNDER_TEST"] = name
                    killed = False
                    for item in session.items:
                        reports = runtestprotocol(item, nextitem=None, log=False)
                        if any(r.failed for r in reports):
                            killed = True
                            break
                    out.write(("killed   " if killed else "SURVIVED ") + name + "\n")
                    out.flush()
                os.environ["MUTANT_UNDER_TEST"] = ""
                return True

        pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
                    plugins=[Loop()])


if __name__ == "__main__":
    main(sys.argv[1:])
