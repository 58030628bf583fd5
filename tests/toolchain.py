"""Whether this machine can run ``compile: true`` (TorchInductor needs a C/C++ compiler)."""

import pytest

from s2mts2.errors import ConfigError
from s2mts2.runtime.device import check_compile


def _c_compiler_found() -> bool:
    try:
        check_compile(True)
    except ConfigError:
        return False
    return True


HAS_C_COMPILER = _c_compiler_found()
needs_c_compiler = pytest.mark.skipif(
    not HAS_C_COMPILER, reason="torch.compile needs a C/C++ compiler (none on PATH)"
)


def compiles(test):
    """A test that compiles networks with TorchInductor: skipped without a C/C++ compiler and
    marked ``compiles`` (minutes on a cold cache; ``make test-floor`` leaves it out)."""
    return pytest.mark.compiles(needs_c_compiler(test))
