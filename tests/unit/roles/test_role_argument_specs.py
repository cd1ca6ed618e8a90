"""Each role's meta/argument_specs.yml and defaults/main.yml say the same thing.

- every option is prefixed with the role name;
- the options with a default are exactly the keys of defaults/main.yml, with equal values;
- required options have no default (a default would make `required` meaningless);
- vars/main.yml only holds internal `__<role>_*` variables.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[3] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "meta" / "argument_specs.yml").exists())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role):
    options = load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load(ROLES_DIR / role / "defaults" / "main.yml")
    for name, option in options.items():
        assert name.startswith(f"{role}_"), f"{name} must start with {role}_"
        assert option.get("description"), f"{name} is not documented"
        if option.get("required"):
            assert "default" not in option and name not in defaults, f"required {name} must have no default"
    with_default = {name for name, option in options.items() if not option.get("required")}
    assert set(defaults) == with_default
    for name in defaults:
        assert defaults[name] == options[name].get("default"), f"{name}: defaults/main.yml and argument_specs differ"


@pytest.mark.parametrize("role", ROLES)
def test_vars_are_internal(role):
    for name in load(ROLES_DIR / role / "vars" / "main.yml"):
        assert name.startswith(f"__{role}_"), f"{name} in vars/main.yml must start with __{role}_"
