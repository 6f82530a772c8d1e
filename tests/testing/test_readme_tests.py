"""The README's "Test your domain" tests pass, run by pytest on the README's domain."""

from __future__ import annotations

import re

import pytest

from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_domain_tests_pass(pytester: pytest.Pytester) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    # Blocks 1 and 2 are the aggregate and its read model; 3 tests them.
    domain, tests = blocks[1:3], blocks[3]
    assert tests in README[README.index("## Test your domain") :]
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_readme_domain="\n\n".join([*domain, tests]))
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)
