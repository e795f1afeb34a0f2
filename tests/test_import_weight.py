"""``import aprompt`` stays light: heavy modules the library does not need are not imported with it.

Every object a module creates at import lives for the whole process, and each full garbage collection during
a run walks all of them; ``scipy.stats`` alone adds ~45k objects and ~0.4 s of import time.
"""

import subprocess
import sys

import pytest

# Not ``rich``: httpx imports it for its command line whenever it is installed.
HEAVY = ("scipy.stats", "matplotlib", "pandas", "ray", "xllamacpp")


@pytest.mark.parametrize("module", HEAVY)
def test_import_aprompt_leaves_a_heavy_module_unimported(module: str) -> None:
    probe = f"import sys, aprompt; print({module!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"import aprompt imported {module}"


def test_the_t_quantile_matches_the_textbook_values() -> None:
    from aprompt._optimize.paired_evidence import t_quantile

    # Two-sided 95 % critical values of Student's t (any printed table).
    for dof, value in ((1, 12.706), (5, 2.571), (10, 2.228), (29, 2.045), (120, 1.980)):
        assert round(t_quantile(0.975, dof), 3) == value
